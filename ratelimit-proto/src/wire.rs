//! Field numbers checked against the wire: each fixture below is written out
//! by hand from the protobuf encoding rules (a key byte is
//! `field_number << 3 | wire_type`; 0 varint, 2 length-delimited), from the
//! upstream `.proto` files named in each module, not produced by these
//! types. Decoding it proves each declared tag; encoding back proves prost
//! writes the same bytes a protoc-generated peer would.

use prost::Message;

use crate::{
    Code, CommitRequest, CommitResponse, DescriptorEntry, DescriptorStatus, Duration, HeaderValue,
    RateLimit, RateLimitDescriptor, RateLimitOverride, RateLimitRequest, RateLimitResponse,
    RateLimitUnit, ReserveRequest, ReserveResponse,
};

fn bytes(hex: &str) -> Vec<u8> {
    hex.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

/// `{key: "k", value: "v"}` as a one-entry descriptor: 10 bytes with its key.
const DESCRIPTOR_K_V: &str = "12 08  0a 06 0a 01 6b 12 01 76";

fn descriptor_k_v() -> RateLimitDescriptor {
    RateLimitDescriptor::new([("k", "v")])
}

#[test]
fn rate_limit_request_fields_1_2_3() {
    let wire = bytes(
        "0a 02 61 69 \
         12 0e  0a 06 0a 01 6b 12 01 76  12 04 08 0a 10 02 \
         18 ac 02",
    );
    let expected = RateLimitRequest {
        domain: "ai".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![DescriptorEntry {
                key: "k".into(),
                value: "v".into(),
            }],
            limit: Some(RateLimitOverride {
                requests_per_unit: 10,
                unit: RateLimitUnit::Minute as i32,
            }),
        }],
        hits_addend: 300,
    };
    assert_eq!(RateLimitRequest::decode(wire.as_slice()).unwrap(), expected);
    assert_eq!(expected.encode_to_vec(), wire);
}

#[test]
fn rate_limit_response_fields_1_to_5_and_skips_6_7() {
    let known = "08 02 \
         12 0f  08 02  12 07 08 05 10 02 1a 01 6e  22 02 08 2a \
         12 08  08 01  18 ff ff ff ff 0f \
         1a 06  0a 01 78 12 01 31 \
         22 08  0a 01 79 1a 03 ff fe 00 \
         2a 02 6e 6f";
    // dynamic_metadata = 6 (an empty Struct) and quota = 7 ({requests: 1}),
    // as a real server may send them: skipped, not an error.
    let unknown = "32 00  3a 02 08 01";
    let wire = bytes(&format!("{known} {unknown}"));
    let expected = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit {
                    requests_per_unit: 5,
                    unit: RateLimitUnit::Minute as i32,
                    name: "n".into(),
                }),
                limit_remaining: 0,
                duration_until_reset: Some(Duration {
                    seconds: 42,
                    nanos: 0,
                }),
            },
            DescriptorStatus {
                code: Code::Ok as i32,
                current_limit: None,
                limit_remaining: u32::MAX,
                duration_until_reset: None,
            },
        ],
        response_headers_to_add: vec![HeaderValue {
            key: "x".into(),
            value: "1".into(),
            raw_value: vec![],
        }],
        request_headers_to_add: vec![HeaderValue {
            key: "y".into(),
            value: String::new(),
            raw_value: vec![0xff, 0xfe, 0x00],
        }],
        raw_body: b"no".to_vec(),
    };
    let decoded = RateLimitResponse::decode(wire.as_slice()).unwrap();
    assert_eq!(decoded, expected);
    assert_eq!(decoded.overall_code(), Code::OverLimit);
    assert_eq!(
        decoded.statuses[0].current_limit.as_ref().unwrap().unit(),
        RateLimitUnit::Minute
    );
    assert_eq!(expected.encode_to_vec(), bytes(known));
}

#[test]
fn an_unknown_code_reads_as_unknown() {
    let decoded = RateLimitResponse::decode(bytes("08 07").as_slice()).unwrap();
    assert_eq!(decoded.overall_code, 7);
    assert_eq!(decoded.overall_code(), Code::Unknown);
}

#[test]
fn reserve_request_fields_1_to_4() {
    let wire = bytes(&format!(
        "0a 01 64  {DESCRIPTOR_K_V}  18 e8 07  22 08 08 1e 10 80 ca b5 ee 01"
    ));
    let expected = ReserveRequest {
        domain: "d".into(),
        descriptors: vec![descriptor_k_v()],
        amount: 1000,
        ttl: Some(Duration {
            seconds: 30,
            nanos: 500_000_000,
        }),
    };
    assert_eq!(ReserveRequest::decode(wire.as_slice()).unwrap(), expected);
    assert_eq!(expected.encode_to_vec(), wire);
}

#[test]
fn reserve_response_fields_1_2() {
    let wire = bytes("08 01 12 02 72 31");
    let expected = ReserveResponse {
        code: Code::Ok as i32,
        reservation_id: "r1".into(),
    };
    let decoded = ReserveResponse::decode(wire.as_slice()).unwrap();
    assert_eq!(decoded, expected);
    assert_eq!(decoded.code(), Code::Ok);
    assert_eq!(expected.encode_to_vec(), wire);
}

#[test]
fn commit_request_fields_1_to_4() {
    let wire = bytes(&format!("0a 01 64  {DESCRIPTOR_K_V}  1a 02 72 31  20 07"));
    let expected = CommitRequest {
        domain: "d".into(),
        descriptors: vec![descriptor_k_v()],
        reservation_id: "r1".into(),
        actual_amount: 7,
    };
    assert_eq!(CommitRequest::decode(wire.as_slice()).unwrap(), expected);
    assert_eq!(expected.encode_to_vec(), wire);
}

#[test]
fn commit_response_field_1() {
    let wire = bytes("08 01");
    let expected = CommitResponse {
        reservation_released: true,
    };
    assert_eq!(CommitResponse::decode(wire.as_slice()).unwrap(), expected);
    assert_eq!(expected.encode_to_vec(), wire);
}

#[test]
fn defaults_encode_to_nothing() {
    // proto3: a request with every field at its default is empty on the
    // wire, so an unset hits_addend really arrives as 0 (meaning 1).
    assert!(RateLimitRequest::default().encode_to_vec().is_empty());
    assert!(CommitResponse::default().encode_to_vec().is_empty());
    let decoded = RateLimitRequest::decode(&[][..]).unwrap();
    assert_eq!(decoded.hits_addend, 0);
}

#[test]
fn truncated_input_is_an_error() {
    let mut wire = ReserveRequest {
        domain: "d".into(),
        descriptors: vec![descriptor_k_v()],
        amount: 5,
        ttl: None,
    }
    .encode_to_vec();
    wire.truncate(wire.len() - 4);
    assert!(ReserveRequest::decode(wire.as_slice()).is_err());
}
