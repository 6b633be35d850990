//! Topics and property bags: any input topic is classified without a panic, and any bag that
//! parses encodes back to pairs that parse to the same pairs.
#![no_main]

use edgefilter::topic::{classify, encode_bag, parse_bag, ModuleId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let id = ModuleId::new("dev", "filter");
    let _ = classify(&id, &format!("devices/dev/modules/filter/inputs/{text}"));
    let _ = classify(&id, text);
    if let Ok(pairs) = parse_bag(text) {
        let bag = encode_bag(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(parse_bag(&bag).expect("an encoded bag parses"), pairs);
    }
});
