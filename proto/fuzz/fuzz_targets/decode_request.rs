#![no_main]
//! Every decoder that reads bytes from the network: never panics, and whatever decodes is the
//! canonical encoding of what it decoded to.

use allium_proto::storage::{Method, Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = Request::decode(data) {
        assert_eq!(d.request.encode(), data);
    }
    for m in Method::ALL {
        if let Ok(r) = Response::decode(data, m) {
            assert_eq!(r.encode(), data);
        }
    }
});
