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

/// Whether (lat, lon) is a WGS84 position: finite, latitude in -90..=90, longitude in
/// -180..=180 degrees.
pub fn is_valid_position(lat: f64, lon: f64) -> bool {
    lat.is_finite()
        && lon.is_finite()
        && (-90.0..=90.0).contains(&lat)
        && (-180.0..=180.0).contains(&lon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_positions() {
        assert!(is_valid_position(90.0, -180.0) && is_valid_position(0.0, 0.0));
        for (lat, lon) in [
            (90.1, 0.0),
            (0.0, 180.1),
            (f64::NAN, 0.0),
            (0.0, f64::INFINITY),
        ] {
            assert!(!is_valid_position(lat, lon), "{lat} {lon}");
        }
    }

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
