//! PUBLISH packets without copying: decoded in place from the read buffer (topic and payload are
//! slices of it) and encoded straight into the outgoing buffer, the two packets of the data path;
//! PUBACKs written as their four bytes; rumqttc's codec handles every other packet.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use rumqttc::mqttbytes::{v4::Packet, QoS};

use super::{LinkError, MAX_OUTGOING};

/// An incoming PUBLISH, read without copying or allocating: its topic and payload are slices of
/// the read buffer. The topic is valid UTF-8 (checked when it was read).
#[derive(Clone, Debug)]
pub struct Message {
    pub pkid: u16,
    pub qos: QoS,
    topic: Bytes,
    pub payload: Bytes,
}

impl Message {
    pub fn topic(&self) -> &str {
        // SAFETY: `read_publish` only makes a `Message` whose topic is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.topic) }
    }
}

/// A packet read from the hub: a PUBLISH as a [`Message`], anything else as rumqttc decodes it.
#[derive(Debug)]
pub enum Received {
    Publish(Message),
    Other(Packet),
}

/// Decodes one PUBLISH from the front of `rx` (whose first byte must say PUBLISH): None until the
/// whole packet is there. MQTT 3.1.1 §3.3.
pub fn read_publish(rx: &mut BytesMut, max_packet: usize) -> Result<Option<Message>, LinkError> {
    let Some(&first) = rx.first() else { return Ok(None) };
    let flags = first & 0x0F;
    let (mut remaining, mut header) = (0usize, 1usize);
    loop {
        let Some(&b) = rx.get(header) else { return Ok(None) };
        remaining |= usize::from(b & 0x7F) << (7 * (header - 1));
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header > 4 {
            return Err(LinkError::Protocol("malformed remaining length".into()));
        }
    }
    if remaining > max_packet {
        return Err(LinkError::Protocol(format!("a {remaining}-byte packet is over the {max_packet}-byte limit")));
    }
    if rx.len() < header + remaining {
        return Ok(None);
    }
    let qos = match (flags >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(LinkError::Protocol("PUBLISH with QoS 3".into())),
    };
    let mut packet = rx.split_to(header + remaining).freeze();
    packet.advance(header);
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    if packet.len() < 2 || packet.len() < 2 + usize::from(u16::from_be_bytes([packet[0], packet[1]])) + id_len {
        return Err(LinkError::Protocol("PUBLISH shorter than its topic".into()));
    }
    let topic_len = usize::from(packet.get_u16());
    let topic = packet.split_to(topic_len);
    if std::str::from_utf8(&topic).is_err() {
        return Err(LinkError::Protocol("PUBLISH topic is not UTF-8".into()));
    }
    let pkid = if qos == QoS::AtMostOnce { 0 } else { packet.get_u16() };
    Ok(Some(Message { pkid, qos, topic, payload: packet }))
}

/// Encodes a QoS 1 PUBLISH of `payload` to `topic` into `tx`, without making a packet first
/// (MQTT 3.1.1 §3.3; `dup` when it is sent again).
pub fn write_publish(tx: &mut BytesMut, topic: &[u8], pkid: u16, payload: &[u8], dup: bool) -> Result<(), LinkError> {
    let remaining = 2 + topic.len() + 2 + payload.len();
    if remaining > MAX_OUTGOING || topic.len() > usize::from(u16::MAX) {
        return Err(LinkError::Protocol(format!("a {remaining}-byte publish is over the hub's limit")));
    }
    tx.reserve(5 + remaining);
    tx.put_u8(0x32 | if dup { 0x08 } else { 0 });
    let mut length = remaining;
    loop {
        let byte = (length & 0x7F) as u8;
        length >>= 7;
        tx.put_u8(if length > 0 { byte | 0x80 } else { byte });
        if length == 0 {
            break;
        }
    }
    tx.put_u16(topic.len() as u16);
    tx.put_slice(topic);
    tx.put_u16(pkid);
    tx.put_slice(payload);
    Ok(())
}

/// Encodes a PUBACK for `pkid` into `tx` (MQTT 3.1.1 §3.4): one per input, so its four bytes
/// rather than a rumqttc `Packet` made, written and dropped.
pub fn write_puback(tx: &mut BytesMut, pkid: u16) {
    let [high, low] = pkid.to_be_bytes();
    tx.put_slice(&[0x40, 0x02, high, low]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_puback_is_the_bytes_rumqttc_writes() {
        for pkid in [1, 0x1234, u16::MAX] {
            let (mut ours, mut theirs) = (BytesMut::new(), BytesMut::new());
            write_puback(&mut ours, pkid);
            Packet::PubAck(rumqttc::mqttbytes::v4::PubAck::new(pkid)).write(&mut theirs, 16).unwrap();
            assert_eq!(ours, theirs);
        }
    }
}
