//! The device finiteness check: where the first NaN or infinity of each
//! recorded tensor lies, found on the device and read in one
//! synchronisation, for f32, f16 and bf16; the router's status word joins it.

#[allow(dead_code)]
#[path = "common/gpu.rs"]
mod gpu;

use dropless::cuda::finite::DeviceFiniteCheck;
use dropless::cuda::routing::route;
use dropless::cuda::DeviceElement;
use dropless::{Element, Error};
use half::{bf16, f16};
use ndarray::Array2;

use gpu::{backend, upload, upload2};

fn case<T: DeviceElement + Element>() {
    let b = backend();
    // [300, 1000]: more elements than one CTA pass, several hits; the lowest
    // flat index wins.
    let mut m = Array2::from_elem((300, 1000), T::from_f32(0.5));
    m[[250, 3]] = T::from_f32(f32::NAN);
    m[[17, 999]] = T::from_f32(f32::NEG_INFINITY);
    m[[17, 998]] = T::from_f32(f32::INFINITY);
    let clean = upload2(Array2::from_elem((4, 8), T::from_f32(1.0)).view());
    let bad = upload2(m.view());
    let scalar = upload(&[1], &[f32::NAN]);

    let mut check = DeviceFiniteCheck::new(b, 3).unwrap();
    check.record(b, "clean", &clean).unwrap();
    check.record(b, "bad", &bad).unwrap();
    check.record(b, "scalar", &scalar).unwrap();
    let err = check.check(b).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFinite { what: "bad", row: 17, col: 998, value } if value == f32::INFINITY
        ),
        "{} {err}",
        T::DTYPE
    );
    assert!(check.record(b, "full", &clean).is_err(), "capacity 3");

    let mut check = DeviceFiniteCheck::new(b, 2).unwrap();
    check.record(b, "clean", &clean).unwrap();
    check.record(b, "scalar", &scalar).unwrap();
    assert!(matches!(
        check.check(b).unwrap_err(),
        Error::NonFinite { what: "scalar", row: 0, col: 0, value } if value.is_nan()
    ));
    let mut check = DeviceFiniteCheck::new(b, 1).unwrap();
    check.record(b, "clean", &clean).unwrap();
    check.check(b).unwrap();
}

#[test]
#[ignore = "requires a CUDA device"]
fn finiteness_is_found_on_the_device() {
    case::<f32>();
    case::<f16>();
    case::<bf16>();
}

#[test]
#[ignore = "requires a CUDA device"]
fn the_router_status_joins_the_check() {
    let b = backend();
    let mut logits = Array2::from_elem((6, 4), 0.25f32);
    logits.row_mut(2).fill(f32::NEG_INFINITY);
    logits[[2, 1]] = 1.0;
    let routing = route(b, &upload2(logits.view()), 2, true).unwrap();
    let output = upload2(Array2::from_elem((6, 8), f32::NAN).view());
    let mut check = DeviceFiniteCheck::new(b, 2).unwrap();
    check.record_router(b, &routing).unwrap();
    check.record(b, "output", &output).unwrap();
    assert_eq!(
        check.check(b).unwrap_err(),
        Error::TooFewExperts {
            token: 2,
            routable: 1,
            needed: 2
        }
    );
}
