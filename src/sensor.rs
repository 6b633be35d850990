//! A simulated SimulatedTemperatureSensor: the same JSON, properties and temperature ramp as
//! iotedge's module (contract §6), so local mode and the perf tool feed the filter what a real
//! deployment does.
//!
//! The machine temperature starts at 21 and gains a value in [-0.25, 1.25) per message until it
//! passes 100, then jitters by ±0.5; pressure follows it linearly from 1 to 10; ambient
//! temperature is 21 ± 0.5 and humidity an integer from 24 to 26. Each message carries
//! `sequenceNumber` (counting from "1") and `batchId` (one GUID per run), content type
//! `application/json` and encoding `utf-8`, and goes to output `temperatureOutput`.
//!
//! Its input `control` takes `{"command": "reset"}`, or an array of such commands, and resets the
//! machine temperature to its minimum, as the original's `ControlMessageHandle` does
//! (Azure/iotedge `edge-modules/SimulatedTemperatureSensor/src/Program.cs` @09a6022: Json.NET reads
//! the command as the enum `ControlCommandEnum { Reset = 0, NoOperation = 1 }`, by name or number;
//! a reset sets a flag that the send loop turns into `currentTemp = MachineTempMin` before its
//! next step; every control message is completed, even one it cannot read). This is the loop the
//! ASA tutorial closes: its alert, routed to `control`, restarts the ramp.

use std::time::SystemTime;

use crate::topic::Properties;

/// The sensor's output name.
pub const OUTPUT: &str = "temperatureOutput";
/// The sensor's input for commands.
pub const CONTROL_INPUT: &str = "control";
const MACHINE_TEMP_MIN: f64 = 21.0;
const MACHINE_TEMP_MAX: f64 = 100.0;
const PRESSURE_MIN: f64 = 1.0;
const PRESSURE_MAX: f64 = 10.0;
const AMBIENT_TEMP: f64 = 21.0;

/// The generator: deterministic for a given seed.
#[derive(Clone, Debug)]
pub struct Sensor {
    rng: u64,
    temperature: f64,
    sequence: u64,
    batch_id: String,
}

/// One message: body and properties.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub body: String,
    pub properties: Properties,
    pub machine_temperature: f64,
}

impl Sensor {
    pub fn new(seed: u64) -> Sensor {
        let mut s = Sensor { rng: seed | 1, temperature: MACHINE_TEMP_MIN, sequence: 0, batch_id: String::new() };
        let (a, b) = (s.next_u64(), s.next_u64());
        s.batch_id = format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        );
        s
    }

    /// Restarts the ramp (the sensor's `reset` command).
    pub fn reset(&mut self) {
        self.temperature = MACHINE_TEMP_MIN;
    }

    /// Handles a message on the `control` input: resets when any command in it is `reset`.
    pub fn control(&mut self, body: &[u8]) -> Control {
        let control = Control::parse(body);
        if control == Control::Reset {
            self.reset();
        }
        control
    }

    /// The machine temperature the next reading starts from.
    pub fn machine_temperature(&self) -> f64 {
        self.temperature
    }

    /// The next message, stamped with `now`.
    pub fn next_reading(&mut self, now: SystemTime) -> Reading {
        if self.temperature > MACHINE_TEMP_MAX {
            self.temperature += self.unit() - 0.5;
        } else {
            self.temperature += -0.25 + self.unit() * 1.5;
        }
        self.sequence += 1;
        let t = self.temperature;
        let pressure = PRESSURE_MIN
            + (t - MACHINE_TEMP_MIN) * (PRESSURE_MAX - PRESSURE_MIN) / (MACHINE_TEMP_MAX - MACHINE_TEMP_MIN);
        let ambient = AMBIENT_TEMP + self.unit() - 0.5;
        let humidity = 24 + self.next_u64() % 3;
        let body = format!(
            r#"{{"machine":{{"temperature":{},"pressure":{}}},"ambient":{{"temperature":{},"humidity":{}}},"timeCreated":"{}"}}"#,
            dotnet_double(t),
            dotnet_double(pressure),
            dotnet_double(ambient),
            humidity,
            json_net_time(now)
        );
        let properties = Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            application: vec![
                ("sequenceNumber".into(), self.sequence.to_string()),
                ("batchId".into(), self.batch_id.clone()),
            ],
            ..Properties::default()
        };
        Reading { body, properties, machine_temperature: t }
    }

    /// A uniform value in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// xorshift64*: small, deterministic, good enough for a simulation.
    fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// What a `control` message asked for.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    Reset,
    NoOperation,
    /// Not a command: logged, and (as the original does) still completed.
    Unreadable(String),
}

impl Control {
    /// A command object or an array of them; the command by name (any case, as Json.NET reads an
    /// enum) or number.
    pub fn parse(body: &[u8]) -> Control {
        let command = |v: &serde_json::Value| match v.get("command") {
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("reset") => Ok(Control::Reset),
            Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("nooperation") => Ok(Control::NoOperation),
            Some(n) if n.as_u64() == Some(0) => Ok(Control::Reset),
            Some(n) if n.as_u64() == Some(1) => Ok(Control::NoOperation),
            Some(other) => Err(format!("unknown command {other}")),
            None => Err("no command".to_string()),
        };
        let commands = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Array(items)) => items.iter().map(command).collect::<Result<Vec<_>, _>>(),
            Ok(v) => command(&v).map(|c| vec![c]),
            Err(e) => Err(format!("not JSON: {e}")),
        };
        match commands {
            Ok(c) if c.contains(&Control::Reset) => Control::Reset,
            Ok(_) => Control::NoOperation,
            Err(e) => Control::Unreadable(e),
        }
    }
}

/// A double as Json.NET writes it: shortest round-trip, always with a fractional part.
fn dotnet_double(v: f64) -> String {
    let s = format!("{v}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// `DateTime.UtcNow` as Json.NET writes it: ISO 8601, up to 7 fraction digits, trailing zeros
/// trimmed, `Z`.
fn json_net_time(now: SystemTime) -> String {
    let stamp = crate::logging::utc_timestamp(now); // "YYYY-MM-DD hh:mm:ss.mmm"
    let nanos = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let fraction = format!("{:07}", nanos / 100);
    let fraction = fraction.trim_end_matches('0');
    let (date, time) = stamp.split_once(' ').unwrap_or((&stamp, ""));
    let time = time.split('.').next().unwrap_or(time);
    if fraction.is_empty() {
        format!("{date}T{time}Z")
    } else {
        format!("{date}T{time}.{fraction}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_command_restarts_the_ramp() {
        let mut s = Sensor::new(7);
        for _ in 0..50 {
            s.next_reading(SystemTime::UNIX_EPOCH);
        }
        assert!(s.machine_temperature() > 30.0);
        assert_eq!(s.control(br#"{"command":"reset"}"#), Control::Reset);
        assert_eq!(s.machine_temperature(), MACHINE_TEMP_MIN);
        let next = s.next_reading(SystemTime::UNIX_EPOCH).machine_temperature;
        assert!((MACHINE_TEMP_MIN - 0.25..MACHINE_TEMP_MIN + 1.25).contains(&next), "{next}");
        for (body, want) in [
            (&br#"[{"command":"NoOperation"},{"command":0}]"#[..], Control::Reset),
            (br#"{"command":"Reset"}"#, Control::Reset),
            (br#"{"command":1}"#, Control::NoOperation),
        ] {
            assert_eq!(Control::parse(body), want, "{}", String::from_utf8_lossy(body));
        }
        for body in [&b"reset"[..], br#"{"command":"explode"}"#, b"{}"] {
            let before = {
                s.next_reading(SystemTime::UNIX_EPOCH);
                s.machine_temperature()
            };
            assert!(matches!(s.control(body), Control::Unreadable(_)));
            assert_eq!(s.machine_temperature(), before, "an unreadable command changes nothing");
        }
    }
}
