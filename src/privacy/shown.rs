//! How privacy figures are printed. A reader takes the printed number, not the `f64` behind it, so rounding to the
//! nearest would let a report show less than the accountant proved: ε = 1.00004 printed as "1.0000", a δ of
//! 8.7449e-5 as "8.745e-5" is fine but 8.7444e-5 as "8.744e-5" is not. Here every figure is rounded the way that
//! keeps the claim true: an ε, a δ, a zCDP ρ or a noise multiplier chosen to meet a target is rounded **up** (the
//! printed privacy loss is never below the true one; the printed σ, if used, still meets the target), an audit's
//! lower bound **down** (it never claims more leakage than the guesses proved). Reading the printed text back
//! gives a number on the promised side of the value; the tests in this file check it for every figure they try.
//!
//! JSON outputs keep the full `f64`; only text for people goes through here.
//!
//! ```
//! use cryptotl::privacy::shown;
//! assert_eq!(shown::epsilon(1.00004), "1.0001"); // not "1.0000"
//! assert_eq!(shown::epsilon(0.5), "0.5000");
//! assert_eq!(shown::epsilon(3.2e-8), "3.200e-8"); // not "0.0000": a tiny ε stays visible
//! assert_eq!(shown::epsilon(f64::INFINITY), "∞");
//! assert_eq!(shown::delta(8.7444e-5), "8.745e-5");
//! assert_eq!(shown::lower_bound(0.99996), "0.999"); // not "1.000"
//! ```

/// Which way the printed figure may sit from the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The printed number, read back, is >= the value (an ε, δ, ρ, or a σ chosen to meet a target).
    AtLeast,
    /// The printed number, read back, is <= the value (a lower bound).
    AtMost,
}

/// `x` with `decimals` decimals, rounded to `side`; a positive `x` below one unit of the last decimal is printed in
/// scientific notation with 3 decimals in the mantissa when `side` is [`Side::AtLeast`] (so a tiny ε is not shown
/// as 0). `∞` / `-∞` for infinities, `NaN` for NaN.
///
/// ```
/// use cryptotl::privacy::shown::{Side, rounded};
/// assert_eq!(rounded(1.8282440001, 6, Side::AtLeast), "1.828245");
/// assert_eq!(rounded(1.8282449999, 6, Side::AtMost), "1.828244");
/// assert_eq!(rounded(-0.25, 1, Side::AtLeast), "-0.2");
/// ```
pub fn rounded(x: f64, decimals: usize, side: Side) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "∞".into() } else { "-∞".into() };
    }
    let unit = 10f64.powi(-(decimals.min(300) as i32));
    if side == Side::AtLeast && x > 0.0 && x < unit {
        return scientific(x, 3, side);
    }
    let scale = 10f64.powi(decimals.min(300) as i32);
    let mut k = match side {
        Side::AtLeast => (x * scale).ceil(),
        Side::AtMost => (x * scale).floor(),
    };
    if !k.is_finite() || k.abs() > 1e15 {
        // Too many digits for the integer trick: the shortest text that reads back as `x` itself.
        return format!("{x:e}");
    }
    // `k / scale` and its formatting round once more; step k until the text reads back on the right side.
    for _ in 0..4 {
        let text = format!("{:.*}", decimals, if k == 0.0 { 0.0 } else { k / scale });
        if on_side(&text, x, side) {
            return text;
        }
        k += if side == Side::AtLeast { 1.0 } else { -1.0 };
    }
    format!("{x:e}")
}

/// `x` as `m.mmm e±p` with `mantissa_decimals` decimals in the mantissa, rounded to `side`.
///
/// ```
/// use cryptotl::privacy::shown::{Side, scientific};
/// assert_eq!(scientific(9.9996e-6, 3, Side::AtLeast), "1.000e-5");
/// assert_eq!(scientific(9.9996e-6, 3, Side::AtMost), "9.999e-6");
/// ```
pub fn scientific(x: f64, mantissa_decimals: usize, side: Side) -> String {
    if !x.is_finite() {
        return rounded(x, 0, side);
    }
    let mut text = format!("{:.*e}", mantissa_decimals, x);
    for _ in 0..4 {
        if on_side(&text, x, side) {
            return text;
        }
        text = nudge(&text, mantissa_decimals, side);
    }
    format!("{x:e}")
}

/// An ε (or any privacy loss a party relies on): 4 decimals, rounded up.
pub fn epsilon(x: f64) -> String {
    rounded(x, 4, Side::AtLeast)
}

/// A δ: scientific with 3 decimals, rounded up.
pub fn delta(x: f64) -> String {
    scientific(x, 3, Side::AtLeast)
}

/// An empirical lower bound on ε (the audit's): 3 decimals, rounded down.
pub fn lower_bound(x: f64) -> String {
    rounded(x, 3, Side::AtMost)
}

fn on_side(text: &str, x: f64, side: Side) -> bool {
    match text.parse::<f64>() {
        Ok(back) => match side {
            Side::AtLeast => back >= x,
            Side::AtMost => back <= x,
        },
        Err(_) => false,
    }
}

/// The next mantissa in `side`'s direction: "8.749e-5" -> "8.750e-5" (AtLeast, positive), "9.999e-6" -> "1.000e-5".
fn nudge(text: &str, decimals: usize, side: Side) -> String {
    let (mantissa, exponent) = text.split_once('e').unwrap_or((text, "0"));
    let (m, p): (f64, i32) = (mantissa.parse().unwrap_or(0.0), exponent.parse().unwrap_or(0));
    let step = if side == Side::AtLeast { 10f64.powi(-(decimals as i32)) } else { -(10f64.powi(-(decimals as i32))) };
    let (mut next, mut p) = (m + step, p);
    if next.abs() >= 10.0 - step.abs() / 2.0 {
        // 9.999e-6 + 0.001 -> 1.000e-5
        next /= 10.0;
        p += 1;
    } else if next != 0.0 && next.abs() < 1.0 - step.abs() / 2.0 {
        // 1.000e-5 - 0.001 -> 9.999e-6: the step is taken in the smaller exponent's units
        next = m * 10.0 + step;
        p -= 1;
    }
    format!("{:.*}e{}", decimals, next, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> f64 {
        text.parse().unwrap_or_else(|_| panic!("{text:?} does not read back as a number"))
    }

    #[test]
    fn printed_figures_sit_on_their_promised_side() {
        // A deterministic spread over many magnitudes, including values just past a rounding boundary.
        let mut values = vec![0.0, 1.0, 1.00004, 0.99996, 1.8282445, 8.7444e-5, 9.9996e-6, 3.2e-8, 1e-300, 123456.78905, 5.5e13];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mantissa = (state >> 11) as f64 / (1u64 << 53) as f64;
            let exponent = (state % 40) as i32 - 20;
            values.push(mantissa * 10f64.powi(exponent));
        }
        for &x in &values {
            assert!(read(&epsilon(x)) >= x, "ε {x} printed {}", epsilon(x));
            assert!(read(&delta(x)) >= x, "δ {x} printed {}", delta(x));
            assert!(read(&lower_bound(x)) <= x, "lower bound {x} printed {}", lower_bound(x));
            assert!(read(&lower_bound(-x)) <= -x, "lower bound {} printed {}", -x, lower_bound(-x));
            // And not further than one unit of the last printed digit (two for the scientific nudge).
            if (1e-4..1e10).contains(&x) {
                assert!(read(&epsilon(x)) - x <= 1e-4 + 1e-9 * x, "ε {x} printed {}", epsilon(x));
                assert!(x - read(&lower_bound(x)) <= 1e-3 + 1e-9 * x, "lower bound {x} printed {}", lower_bound(x));
            }
            if x > 1e-300 {
                assert!(read(&delta(x)) <= x * (1.0 + 2.1e-3), "δ {x} printed {}", delta(x));
            }
        }
    }

    #[test]
    fn nearest_rounding_would_have_understated() {
        // The cases the module exists for: rounding to the nearest prints less than the value.
        assert_eq!(format!("{:.4}", 1.00004), "1.0000");
        assert_eq!(epsilon(1.00004), "1.0001");
        assert_eq!(format!("{:.3}", 0.99996), "1.000");
        assert_eq!(lower_bound(0.99996), "0.999");
        assert_eq!(format!("{:.6}", 3.2e-8), "0.000000");
        assert_eq!(epsilon(3.2e-8), "3.200e-8");
    }

    #[test]
    fn special_values() {
        assert_eq!(epsilon(f64::INFINITY), "∞");
        assert_eq!(lower_bound(f64::NEG_INFINITY), "-∞");
        assert_eq!(epsilon(f64::NAN), "NaN");
        assert_eq!(epsilon(0.0), "0.0000");
        assert_eq!(lower_bound(0.0), "0.000");
        assert_eq!(lower_bound(-1e-9), "-0.001");
        assert_eq!(epsilon(-1e-9), "0.0000");
    }
}
