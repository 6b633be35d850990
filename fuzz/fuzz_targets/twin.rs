//! Twin patches to settings: any document either is rejected or yields settings within their
//! ranges; nothing panics.
#![no_main]

use edgefilter::settings::{apply_desired, reported, Settings, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(serde_json::Value::Object(desired)) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    for source in [Source::Patch, Source::FullTwin] {
        let a = apply_desired(&Settings::default(), &Settings::default(), &desired, source);
        let s = &a.settings;
        assert!(s.temperature_threshold.is_finite() && s.temperature_threshold.abs() <= 1.0e6);
        assert!((1..=10_000).contains(&s.batch_size));
        assert!(s.batch_interval_ms <= 60_000);
        assert!((1..=86_400).contains(&s.report_interval_secs));
        if let Some(rules) = &s.rules {
            assert!(!rules.rules.is_empty() && rules.rules.len() <= edgefilter::rules::MAX_RULES);
            // What is reported reads back as the same rules.
            let again = edgefilter::rules::Rules::parse(rules.reported().as_object().unwrap()).unwrap();
            assert_eq!(again.rules, rules.rules);
        }
        let _ = reported(s, None, &a.rejected).to_string();
    }
});
