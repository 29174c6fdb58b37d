//! Traffic Selector payload body, TSi and TSr (RFC 7296 3.13). The selectors themselves
//! are in [`crate::wire::ts`].

use crate::codec::{Codec, Reader};
use crate::error::DecodeError;
use crate::wire::ts::TrafficSelector;

/// TSi or TSr: one or more traffic selectors (RFC 7296 3.13). The one-octet count
/// bounds the list to 255 and must agree with the selectors present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsPayload {
    pub selectors: Vec<TrafficSelector>,
}

impl TsPayload {
    pub fn new(selectors: Vec<TrafficSelector>) -> Self {
        Self { selectors }
    }
}

impl<'a> Codec<'a> for TsPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        debug_assert!(!self.selectors.is_empty() && self.selectors.len() <= u8::MAX as usize);
        out.push(self.selectors.len() as u8);
        out.extend_from_slice(&[0; 3]);
        for s in &self.selectors {
            s.encode(out);
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let count = r.u8("Number of TSs")?;
        let _reserved = r.take(3, "TS RESERVED")?;
        // "Traffic Selectors (variable length) - One or more" (RFC 7296 3.13).
        if count == 0 {
            return Err(DecodeError::Missing("traffic selector"));
        }
        let mut selectors = Vec::new();
        for _ in 0..count {
            selectors.push(TrafficSelector::read(r)?);
        }
        r.expect_empty("traffic selectors")?;
        Ok(Self { selectors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ts_payload_count_must_match() {
        let p = TsPayload::new(vec![
            TrafficSelector::any(false),
            TrafficSelector::single("239.0.0.1".parse().unwrap(), 17, Some(5000)),
        ]);
        let b = p.to_bytes();
        assert_eq!(b[0], 2);
        assert_eq!(TsPayload::read_bytes(&b).unwrap(), p);
        let mut more = b.clone();
        more[0] = 3;
        assert!(TsPayload::read_bytes(&more).is_err());
        let mut fewer = b;
        fewer[0] = 1;
        assert!(TsPayload::read_bytes(&fewer).is_err());
        assert!(TsPayload::read_bytes(&[0, 0, 0, 0]).is_err());
    }
}
