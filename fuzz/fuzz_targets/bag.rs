//! Topics and property bags: any input topic is classified without a panic, any bag that parses
//! encodes back to pairs that parse to the same pairs, and the module's allocation-free output
//! topic is byte for byte the one the readable path builds.
#![no_main]

use edgefilter::topic::{classify, encode_bag, parse_bag, write_output_topic, BagScratch, ModuleId, Properties};
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
    let mut written = bytes::BytesMut::new();
    let fast =
        write_output_topic(&mut written, &id, text, "output1", &[("MessageType", "Alert")], &mut BagScratch::default());
    let reference = Properties::from_bag(text).map(|mut p| {
        p.set("MessageType", "Alert");
        id.events_topic(&p.to_output_bag("output1"))
    });
    assert_eq!(fast.map(|()| String::from_utf8(written.to_vec()).unwrap()), reference);
});
