//! Strategies for the property tests that feed untrusted bytes to every parser: random bytes,
//! and JSON objects with the keys a parser looks for holding hostile values (huge and negative
//! numbers, floats, wrong types, control characters, deep nesting). `PROPTEST_CASES` sets how
//! many cases each test runs (README: a longer run).

use proptest::prelude::*;

/// Cases per property: `PROPTEST_CASES` (a longer run, from a random seed), else 256 cases from
/// a fixed seed, so that CI runs the same inputs every time and a red run can be replayed.
pub fn config() -> ProptestConfig {
    let asked = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok());
    ProptestConfig {
        cases: asked.unwrap_or(256),
        rng_seed: match asked {
            Some(_) => proptest::test_runner::RngSeed::Random,
            None => proptest::test_runner::RngSeed::Fixed(0x746f_6b65_6e76_6175),
        },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One JSON value as raw text, hostile where it can be.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("9223372036854775808".to_owned()),
        Just("300000000000".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        Just("-1e400".to_owned()),
        Just("0.5".to_owned()),
        Just("\"99999999999999999999\"".to_owned()),
        Just(
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
                .to_owned()
        ),
        Just("{}".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| serde_json::to_string(&n).unwrap_or_else(|_| "0".into())),
        ".{0,40}".prop_map(|text| serde_json::to_string(&text).unwrap_or_default()),
        "[\\x00-\\x1f\\x7f]{0,8}https://x/\\x1b]52;c;\\x07"
            .prop_map(|text| serde_json::to_string(&text).unwrap_or_default()),
    ]
}

/// Bytes a provider (or a file) might send to a parser that looks for `keys`.
pub fn untrusted_json(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let object = proptest::collection::vec(
        (proptest::sample::select(keys), hostile_value()),
        0..keys.len() + 2,
    )
    .prop_map(|pairs| {
        let fields: Vec<String> = pairs
            .into_iter()
            .map(|(key, value)| {
                format!("{}:{value}", serde_json::to_string(key).unwrap_or_default())
            })
            .collect();
        format!("{{{}}}", fields.join(",")).into_bytes()
    });
    prop_oneof![
        3 => object,
        1 => proptest::collection::vec(any::<u8>(), 0..256),
    ]
}
