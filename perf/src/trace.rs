//! Traces: JSON lines, one message each: `{"t": seconds, "properties": {"k": "v"}, "body": "…"}`.
//! `t` is relative to the first message. Bodies are text (telemetry is JSON).

use serde_json::{json, Map, Value};

use edgefilter::sensor::Sensor;

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub t: f64,
    pub properties: Vec<(String, String)>,
    pub body: String,
}

impl Message {
    pub fn to_line(&self) -> String {
        let props: Map<String, Value> =
            self.properties.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect();
        json!({"t": self.t, "properties": props, "body": self.body}).to_string()
    }

    /// Reads one line; the error names what is wrong.
    pub fn from_line(line: &str) -> Result<Message, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let t = v
            .get("t")
            .and_then(Value::as_f64)
            .filter(|t| t.is_finite() && *t >= 0.0)
            .ok_or("no non-negative number \"t\"")?;
        let body = v.get("body").and_then(Value::as_str).ok_or("no string \"body\"")?.to_string();
        let properties = match v.get("properties") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    v.as_str().map(|s| (k.clone(), s.to_string())).ok_or(format!("property {k:?} is not a string"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("\"properties\" is not an object".into()),
        };
        Ok(Message { t, properties, body })
    }
}

/// Reads a whole trace; an unreadable line is an error naming its number.
pub fn read(text: &str) -> Result<Vec<Message>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Message::from_line(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct Generate {
    pub count: u64,
    /// Messages per second in the trace's timing.
    pub rate: f64,
    /// None: SimulatedTemperatureSensor's ramp. Some(r): this fraction of messages above 25.
    pub alert_ratio: Option<f64>,
    /// Pad bodies to at least this many bytes (an extra `padding` member).
    pub size: Option<usize>,
    pub seed: u64,
    /// The first message's `timeCreated`, in Unix seconds (None: 1,790,000,000, 2026-09-21, so
    /// that a trace is the same every day). Event-time aggregates need times near the clock.
    pub start: Option<u64>,
}

/// SimulatedTemperatureSensor messages: its body and properties, its ramp or a chosen alert ratio.
pub fn generate(g: &Generate) -> Vec<Message> {
    let mut sensor = Sensor::new(g.seed);
    let mut rng = g.seed | 1;
    let epoch = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(g.start.unwrap_or(1_790_000_000));
    (0..g.count)
        .map(|i| {
            let t = i as f64 / g.rate.max(1e-9);
            let reading = sensor.next_reading(epoch + std::time::Duration::from_secs_f64(t));
            let mut body = reading.body;
            if let Some(ratio) = g.alert_ratio {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let hot = (rng >> 11) as f64 / (1u64 << 53) as f64 % 1.0 < ratio;
                let t = if hot { 30.0 + (i % 50) as f64 / 10.0 } else { 20.0 + (i % 40) as f64 / 10.0 };
                // Replace the machine temperature in place, keeping the sensor's member order.
                let key = "\"temperature\":";
                if let Some(start) = body.find(key).map(|p| p + key.len()) {
                    if let Some(len) = body[start..].find(',') {
                        body.replace_range(start..start + len, &format!("{t:.1}"));
                    }
                }
            }
            if let Some(size) = g.size {
                if body.len() + 13 < size {
                    let pad = "x".repeat(size - body.len() - 13);
                    body.insert_str(body.len() - 1, &format!(",\"padding\":\"{pad}\""));
                }
            }
            let mut properties = reading.properties.application.clone();
            properties.push(("$.ct".into(), "application/json".into()));
            properties.push(("$.ce".into(), "utf-8".into()));
            properties.sort(); // a trace line holds them as a JSON object, by key
            Message { t, properties, body }
        })
        .collect()
}
