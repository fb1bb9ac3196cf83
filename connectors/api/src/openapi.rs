//! The OpenAPI 3.1 document served at `/openapi.json`.

use serde_json::{Value, json};

fn param(name: &str, location: &str, required: bool, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": location, "required": required, "schema": schema, "description": description})
}

fn errors() -> Value {
    json!({
        "400": {"description": "Bad query", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "401": {"description": "Missing or unknown bearer token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "Not found, or not visible to this token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "503": {"description": "State store unavailable", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    })
}

fn ok(schema: Value) -> Value {
    let mut r = errors();
    r["200"] = json!({"description": "OK", "content": {"application/json": {"schema": schema}}});
    r
}

/// The document.
pub fn document() -> Value {
    let id = param("id", "path", true, json!({"type": "string"}), "identifier");
    let num = json!({"type": ["number", "null"]});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fleetstream fleet-api",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Vehicle state, windows, incidents, deliveries and a live stream. Operators see every vehicle; customers only their own (others answer 404)."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/vehicles/{id}": {"get": {
                "summary": "A vehicle's latest state and status",
                "parameters": [id],
                "responses": ok(json!({"$ref": "#/components/schemas/Vehicle"}))
            }},
            "/v1/vehicles": {"get": {
                "summary": "Vehicles, optionally by status, paged by the last id",
                "parameters": [
                    param("status", "query", false, json!({"type": "string", "enum": ["moving", "idle", "offline"]}), "only vehicles in this status"),
                    param("limit", "query", false, json!({"type": "integer", "minimum": 1, "default": 100}), "page size (at most app.max_page)"),
                    param("after", "query", false, json!({"type": "string"}), "next_after of the previous page")
                ],
                "responses": ok(json!({"type": "object", "properties": {
                    "vehicles": {"type": "array", "items": {"$ref": "#/components/schemas/Vehicle"}},
                    "next_after": {"type": ["string", "null"], "description": "pass as `after` for the next page; null: no more"}
                }}))
            }},
            "/v1/vehicles/{id}/windows": {"get": {
                "summary": "Closed aggregation windows of a vehicle",
                "parameters": [
                    param("id", "path", true, json!({"type": "string"}), "vehicle id"),
                    param("from", "query", false, json!({"type": "integer"}), "window start from, ms since the epoch (default: to - 1 h)"),
                    param("to", "query", false, json!({"type": "integer"}), "window start before, ms (default: now)")
                ],
                "responses": ok(json!({"type": "object", "properties": {
                    "vehicle_id": {"type": "string"}, "from": {"type": "integer"}, "to": {"type": "integer"},
                    "windows": {"type": "array", "items": {"$ref": "#/components/schemas/Window"}}
                }}))
            }},
            "/v1/incidents": {"get": {
                "summary": "A vehicle's incidents, newest first",
                "parameters": [
                    param("vehicle", "query", true, json!({"type": "string"}), "vehicle id"),
                    param("limit", "query", false, json!({"type": "integer", "default": 50, "maximum": 1000}), "most incidents")
                ],
                "responses": ok(json!({"type": "object", "properties": {
                    "vehicle_id": {"type": "string"},
                    "incidents": {"type": "array", "items": {"$ref": "#/components/schemas/Incident"}}
                }}))
            }},
            "/v1/deliveries/{id}": {"get": {
                "summary": "A delivery: status, ETA, late, delivered_at",
                "parameters": [id],
                "responses": ok(json!({"$ref": "#/components/schemas/Delivery"}))
            }},
            "/v1/stream": {"get": {
                "summary": "Live Server-Sent Events: `position`, `alert`, `incident` (and `lagged` when events were dropped for a slow client)",
                "parameters": [
                    param("vehicles", "query", false, json!({"type": "string"}), "comma-separated vehicle ids (default: every visible vehicle)"),
                    param("types", "query", false, json!({"type": "string", "default": "position,alert,incident"}), "comma-separated event types"),
                    param("ticket", "query", false, json!({"type": "string"}), "a single-use ticket from POST /v1/stream/tickets, for EventSource clients that cannot set headers (tokens never go in URLs)")
                ],
                "responses": {
                    "200": {"description": "text/event-stream; each event's data is one JSON object", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "400": {"description": "Unknown type, or a token in the URL"},
                    "401": {"description": "Missing or unknown token, or an expired or used ticket"},
                    "429": {"description": "Request budget exhausted (Retry-After) or too many open streams"}
                }
            }},
            "/v1/stream/tickets": {"post": {
                "summary": "A single-use ticket for one live stream, valid for `app.ticket_ttl` (30 s)",
                "responses": {
                    "200": {"description": "The ticket", "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "ticket": {"type": "string"}, "expires_in_s": {"type": "integer"}
                    }}}}},
                    "401": {"description": "Missing or unknown token"},
                    "429": {"description": "Request budget exhausted or too many outstanding tickets"}
                }
            }},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OK"}}}},
            "/map": {"get": {"summary": "Live map page (token in the URL fragment: /map#token=...)", "security": [], "responses": {"200": {"description": "text/html"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "detail"], "properties": {"error": {"type": "string"}, "detail": {"type": "string"}}},
                "Vehicle": {"type": "object", "required": ["vehicle_id", "status", "event_time", "lat", "lon"], "properties": {
                    "vehicle_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["moving", "idle", "offline"]},
                    "event_time": {"type": "integer", "description": "ms since the epoch"},
                    "age_s": {"type": "number"},
                    "lat": {"type": "number"}, "lon": {"type": "number"},
                    "speed_kmh": num, "heading_deg": num, "cargo_temp_c": num,
                    "door_open": {"type": ["boolean", "null"]}, "ignition_on": {"type": ["boolean", "null"]}
                }},
                "Window": {"type": "object", "properties": {
                    "vehicle_id": {"type": "string"}, "window_start": {"type": "integer"}, "window_end": {"type": "integer"},
                    "count": {"type": "integer"}, "speed_avg_kmh": num, "speed_max_kmh": num,
                    "cargo_temp_min_c": num, "cargo_temp_avg_c": num, "cargo_temp_max_c": num,
                    "distance_m": {"type": "number"}, "moving_s": {"type": "number"}, "idle_s": {"type": "number"},
                    "event_id": {"type": "string"}
                }},
                "Incident": {"type": "object", "properties": {
                    "incident_id": {"type": "string"}, "vehicle_id": {"type": "string"}, "kind": {"type": "string"},
                    "severity": {"type": "string"}, "status": {"type": "string"}, "event_time": {"type": "integer"},
                    "recorded_at": {"type": "integer"}, "lat": num, "lon": num,
                    "description": {"type": ["string", "null"]}, "notified_at": {"type": ["integer", "null"]}
                }},
                "Delivery": {"type": "object", "properties": {
                    "delivery_id": {"type": "string"}, "vehicle_id": {"type": "string"}, "driver_id": {"type": ["string", "null"]},
                    "status": {"type": "string", "enum": ["created", "assigned", "picked_up", "in_transit", "arrived", "delivered", "failed", "cancelled"]},
                    "updated_at": {"type": "integer"}, "dest_lat": num, "dest_lon": num,
                    "promised_by": {"type": ["integer", "null"]}, "eta_ms": {"type": ["integer", "null"]},
                    "eta_confidence": num, "remaining_m": num, "late": {"type": "boolean"},
                    "last_lat": num, "last_lon": num, "delivered_at": {"type": ["integer", "null"]},
                    "completed_by": {"type": ["string", "null"], "enum": ["driver", "geofence", null]}
                }}
            }
        }
    })
}
