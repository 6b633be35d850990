//! The filter's decision: does this message alert, and what does the alert look like.
//!
//! The tutorial's rule, unchanged: a message on `input1` alerts when `machine.temperature` is
//! strictly greater than `TemperatureThreshold`; the alert is the same body, the same properties
//! plus `MessageType=Alert`, sent to `output1`. Everything else is dropped, with a reason.
//!
//! With alert rules in the twin ([`crate::rules`]), [`decide_rules`] says which rules a message
//! matches: it is sent once per matching rule, to that rule's output with its properties.

use crate::rules::{Rules, MAX_RULES};
use crate::scan::{scan, scan_paths, Malformed, Missing, Scan};
use crate::topic::Properties;

/// The input the filter reads.
pub const INPUT: &str = "input1";
/// The output alerts go to.
pub const OUTPUT: &str = "output1";

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Forward as an alert.
    Alert,
    /// Dropped, for this reason.
    Drop(Reason),
}

/// Why a message is not an alert. One name per reason in logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A valid temperature at or below the threshold: the normal case.
    BelowThreshold,
    /// Under alert rules: a valid message that no rule matches (the normal case there).
    NoRuleMatched,
    /// A message on another input than `input1`.
    UnknownInput,
    /// A topic whose property bag cannot be read.
    BadPropertyBag,
    /// A body over edgeHub's 256 KiB message limit: it could not have come through edgeHub,
    /// and its alert could not go back through it.
    TooLarge,
    /// An alert that would be larger than edgeHub accepts (its body and properties as edgeHub
    /// counts them, [`crate::topic::message_size`]): given up, its input acknowledged.
    AlertTooLarge,
    /// An alert that failed on [`crate::limits::MAX_DELIVERY_ATTEMPTS`] connections in a row:
    /// given up (sent to `DeadLetterOutput` when that is set), its input acknowledged.
    DeliveryFailed,
    Missing(Missing),
    Malformed(Malformed),
}

impl Reason {
    /// The reason's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Reason::BelowThreshold => "below_threshold",
            Reason::NoRuleMatched => "no_rule_matched",
            Reason::UnknownInput => "unknown_input",
            Reason::BadPropertyBag => "bad_property_bag",
            Reason::TooLarge => "too_large",
            Reason::AlertTooLarge => "alert_too_large",
            Reason::DeliveryFailed => "delivery_failed",
            Reason::Missing(m) => m.name(),
            Reason::Malformed(m) => m.name(),
        }
    }

    /// Every reason, for metrics that list them all.
    pub const ALL: [Reason; 16] = [
        Reason::BelowThreshold,
        Reason::NoRuleMatched,
        Reason::UnknownInput,
        Reason::BadPropertyBag,
        Reason::TooLarge,
        Reason::AlertTooLarge,
        Reason::DeliveryFailed,
        Reason::Missing(Missing::NotAnObject),
        Reason::Missing(Missing::NoMachine),
        Reason::Missing(Missing::MachineNotAnObject),
        Reason::Missing(Missing::NoTemperature),
        Reason::Missing(Missing::TemperatureNotANumber),
        Reason::Malformed(Malformed::InvalidUtf8),
        Reason::Malformed(Malformed::InvalidJson),
        Reason::Malformed(Malformed::NumberOutOfRange),
        Reason::Malformed(Malformed::TooDeep),
    ];

    /// Index into [`Reason::ALL`].
    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

pub use crate::limits::MAX_MESSAGE_SIZE;

/// Decides a body against the threshold.
pub fn decide(body: &[u8], temperature_threshold: f64) -> Decision {
    if body.len() > MAX_MESSAGE_SIZE {
        return Decision::Drop(Reason::TooLarge);
    }
    match scan(body) {
        Scan::Temperature(t) if t > temperature_threshold => Decision::Alert,
        Scan::Temperature(_) => Decision::Drop(Reason::BelowThreshold),
        Scan::Missing(m) => Decision::Drop(Reason::Missing(m)),
        Scan::Malformed(m) => Decision::Drop(Reason::Malformed(m)),
    }
}

/// `machine.temperature` as a scan made for another purpose read it (NaN: no number there), or
/// why the body is not JSON.
pub type Temperature = Result<f64, Malformed>;

/// [`decide`] where one scan of the body already read `machine.temperature` (the aggregates'
/// pass, [`crate::aggregate::Aggregator::temperature`]): `scanned` is the number there (NaN:
/// none) or why the body is not JSON. The same decision without a second pass over the body;
/// only a body with no number there is scanned again, for [`scan`] to name the reason.
pub fn decide_scanned(body: &[u8], scanned: Option<Temperature>, temperature_threshold: f64) -> Decision {
    match scanned {
        _ if body.len() > MAX_MESSAGE_SIZE => Decision::Drop(Reason::TooLarge),
        Some(Ok(t)) if t > temperature_threshold => Decision::Alert,
        Some(Ok(t)) if !t.is_nan() => Decision::Drop(Reason::BelowThreshold),
        Some(Err(m)) => Decision::Drop(Reason::Malformed(m)),
        _ => decide(body, temperature_threshold),
    }
}

/// What happens to one message under alert rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Matched {
    /// Forward once per rule whose bit is set (bit `i`: the `i`th rule in name order).
    Rules(u16),
    Drop(Reason),
}

/// Decides a body against a rule set: every rule's value found in one pass of the scanner.
pub fn decide_rules(body: &[u8], rules: &Rules) -> Matched {
    decide_rules_scanned(body, None, rules)
}

/// [`decide_rules`] where one scan of the body already read `machine.temperature` (see
/// [`decide_scanned`]), which serves rules on that path alone without a second pass.
pub fn decide_rules_scanned(body: &[u8], scanned: Option<Temperature>, rules: &Rules) -> Matched {
    if body.len() > MAX_MESSAGE_SIZE {
        return Matched::Drop(Reason::TooLarge);
    }
    let mut values = [f64::NAN; MAX_RULES];
    // Every rule on the tutorial's path: the scanner made for it finds it for them all.
    let scanned = match scanned {
        Some(t) if rules.matcher.tutorial_path_only => t.map(|t| values[0] = t),
        _ if rules.matcher.tutorial_path_only => scan(body).number().map(|t| values[0] = t),
        _ => scan_paths(body, &rules.matcher, &mut values),
    };
    match scanned {
        Err(m) => Matched::Drop(Reason::Malformed(m)),
        Ok(()) => match rules.matches(&values) {
            0 => Matched::Drop(Reason::NoRuleMatched),
            mask => Matched::Rules(mask),
        },
    }
}

/// The application property an alert carries (replacing one of the same key).
pub const ALERT_PROPERTY: (&str, &str) = ("MessageType", "Alert");
/// The application property naming why a malformed message went to the dead-letter output.
pub const DEAD_LETTER_PROPERTY: &str = "FilterError";

/// The properties of a malformed message sent to the dead-letter output: its own, plus
/// `FilterError` naming the reason.
pub fn dead_letter_properties(mut properties: Properties, reason: Reason) -> Properties {
    properties.set(DEAD_LETTER_PROPERTY, reason.name());
    properties
}

/// The properties of the alert made from a message with `properties`.
pub fn alert_properties(mut properties: Properties) -> Properties {
    properties.set(ALERT_PROPERTY.0, ALERT_PROPERTY.1);
    properties
}
