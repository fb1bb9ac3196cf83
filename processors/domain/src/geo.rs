//! Geodesy on WGS84 coordinates, through the `geo` crate.

use geo::{Distance, Haversine, Point};

/// Great-circle (haversine) distance in metres between two (lat, lon) positions in degrees.
///
/// ```
/// // Bogotá to Medellín: about 240 km as the crow flies.
/// let d = fleet_domain::geo::haversine_m(4.7110, -74.0721, 6.2442, -75.5812);
/// assert!((d - 238_000.0).abs() < 5_000.0, "{d}");
/// ```
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    Haversine.distance(Point::new(lon1, lat1), Point::new(lon2, lat2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_distances() {
        assert_eq!(haversine_m(1.0, 2.0, 1.0, 2.0), 0.0);
        // One degree of longitude on the equator: ~111.2 km.
        let d = haversine_m(0.0, 0.0, 0.0, 1.0);
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
        // Across the antimeridian is short, not half the planet.
        let d = haversine_m(0.0, 179.9, 0.0, -179.9);
        assert!(d < 25_000.0, "{d}");
        // Symmetric.
        assert_eq!(
            haversine_m(4.6, -74.0, 6.2, -75.5),
            haversine_m(6.2, -75.5, 4.6, -74.0)
        );
    }
}
