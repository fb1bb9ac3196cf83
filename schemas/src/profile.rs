//! Vehicle profiles: the `fleet.vehicle-profiles` record mapped onto the domain's rule inputs
//! (one mapping for every reader of the table: anomaly- and deliveries-processor, fleetctl).

use crate::{Contact, VehicleProfile};
use fleet_domain::route::RouteCorridor;
use fleet_domain::rules::{Geofence, Profile, Thresholds};

/// One vehicle's rule profile and contacts, as held in the profiles table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileEntry {
    /// Thresholds, route and geofences for the rules.
    pub profile: Profile,
    /// Who is told (empty: the configured recipients).
    pub contacts: Vec<Contact>,
    /// Owning customer.
    pub customer_id: Option<String>,
}

/// Maps a published profile onto `defaults` (fields the record leaves out keep the default);
/// `Err` says what is wrong (the record is dead-lettered and the previous version kept).
pub fn profile_entry(
    record: VehicleProfile,
    defaults: &Thresholds,
) -> Result<ProfileEntry, String> {
    let mut t = defaults.clone();
    if record.cargo_temp_min_c.is_some() || record.cargo_temp_max_c.is_some() {
        t.cargo_temp_min_c = record.cargo_temp_min_c;
        t.cargo_temp_max_c = record.cargo_temp_max_c;
    }
    if let Some(v) = record.speed_limit_kmh {
        t.speed_limit_kmh = v;
    }
    if let Some(v) = record.offline_after_ms {
        t.offline_after_ms = v;
    }
    if let Some(v) = record.route_corridor_m {
        t.route_corridor_m = v;
    }
    t.validate().map_err(|e| e.to_string())?;
    let route = match record.route.len() {
        0 => None,
        _ => {
            let pts: Vec<(f64, f64)> = record.route.iter().map(|w| (w.lat, w.lon)).collect();
            Some(RouteCorridor::new(&pts).map_err(|e| e.to_string())?)
        }
    };
    let mut geofences = Vec::with_capacity(record.geofences.len());
    for g in record.geofences {
        let valid_pos = fleet_domain::geo::is_valid_position(g.lat, g.lon);
        if !(valid_pos && g.radius_m.is_finite() && g.radius_m > 0.0) {
            return Err(format!(
                "geofence {:?}: centre {},{} radius {} m is not valid",
                g.id, g.lat, g.lon, g.radius_m
            ));
        }
        geofences.push(Geofence {
            id: g.id,
            lat: g.lat,
            lon: g.lon,
            radius_m: g.radius_m,
            planned_stop: g.planned_stop,
        });
    }
    Ok(ProfileEntry {
        profile: Profile {
            thresholds: t,
            route,
            geofences,
        },
        contacts: record.contacts,
        customer_id: record.customer_id,
    })
}
