//! What the server's source data tells a run: the membership attack on it through the client's view, and how many
//! target texts are among the texts the network learned from.

use crate::config::RunConfig;
use crate::data::Split;
use crate::error::Result;
use crate::pipeline::load_source;
use crate::pipeline::transfer::lower_forward;
use crate::report::NetworkOrigin;

use super::PretrainedLower;

/// The membership-inference figure on the server's source data for the budget section ([`crate::membership`]):
/// the loss attack on `lower` as the client sees it (its outputs, plaintext: encrypted evaluation returns the same
/// outputs up to the measured lookup errors). A shipped network unchanged by this run carries the figure measured
/// when it was built (`ship-network`), so the quickstart needs no source data; any other network is attacked now,
/// on `source` or the config's source data loaded here (embeddings come from the cache pretraining filled). When the
/// source data cannot be loaded the report says so instead of failing the run. `now` says where a figure measured
/// here was measured (the run's report, or the server's published statement).
pub fn source_membership(cfg: &RunConfig, lower: &PretrainedLower, source: Option<&Split>, now: &str) -> Result<crate::privacy::budget::SourceMembership> {
    use crate::privacy::budget::SourceMembership;
    if lower.origin == NetworkOrigin::Shipped && lower.weight_noise.is_none() {
        let shipped = crate::shipped_network::find(&lower.meta.key).transpose()?;
        return Ok(match shipped.and_then(|n| n.manifest.membership.clone()) {
            Some(attack) => SourceMembership {
                provenance: format!("measured when the shipped network was built (`{}`; `cryptotl server membership <config>` measures it again from the fetched sources)", crate::shipped_network::BUILD_COMMAND),
                attack: Some(attack),
            },
            None => SourceMembership { provenance: "the shipped network carries no figure; `cryptotl server membership <config>` measures it from the fetched sources".into(), attack: None },
        });
    }
    let loaded;
    let source = match source {
        Some(s) => s,
        None => match load_source(cfg) {
            Ok((s, _)) => {
                loaded = s;
                &loaded
            }
            Err(e) => {
                tracing::warn!(error = %e, "membership attack skipped: the source data cannot be loaded");
                return Ok(SourceMembership { provenance: format!("the source data cannot be loaded: {e}"), attack: None });
            }
        },
    };
    let attack = measure_membership(cfg, lower, source)?;
    Ok(SourceMembership { provenance: now.into(), attack: Some(attack) })
}

/// The contamination check of a run in one process ([`crate::overlap`]): how many of the `target`'s texts, per
/// split, the server's network `lower` learned from. A shipped network brings the fingerprints of its source texts
/// (so the quickstart needs no source data); any other is checked against `source` or the config's source data
/// loaded here (texts only). When neither is at hand the check says why instead of failing the run. With
/// `head.transfer_unit = "sentence"` the target's sentences, as the network receives them, are counted too. A target
/// text or sentence found among them is also logged as a warning.
pub fn source_overlap(cfg: &RunConfig, lower: &PretrainedLower, source: Option<&Split>, target: &Split) -> crate::overlap::OverlapCheck {
    source_overlap_of(cfg, Some(lower), source, target)
}

/// [`source_overlap`], with the network when there is one: without, the check reads the config's source texts
/// (`curve` and `sweep` need no network for it, nor any weight noise drawn).
pub fn source_overlap_of(cfg: &RunConfig, lower: Option<&PretrainedLower>, source: Option<&Split>, target: &Split) -> crate::overlap::OverlapCheck {
    use crate::overlap::{OverlapCheck, SourceFingerprints};
    let fingerprints = if let Some(lower) = lower.filter(|l| l.origin == NetworkOrigin::Shipped) {
        match crate::shipped_network::find(&lower.meta.key).transpose() {
            Ok(Some(shipped)) => shipped.source_fingerprints.clone().ok_or_else(|| "the shipped network carries no fingerprints of its source texts".to_string()),
            Ok(None) => Err("the shipped network is not in this binary".to_string()),
            Err(e) => Err(e.to_string()),
        }
    } else {
        match source {
            Some(s) => Ok(SourceFingerprints::of_source(s)),
            None => load_source(cfg).map(|(s, _)| SourceFingerprints::of_source(&s)).map_err(|e| format!("the source data cannot be loaded: {e}")),
        }
    };
    match fingerprints {
        Ok(f) => {
            let mut o = f.overlap(target);
            if cfg.head.transfer_unit == crate::config::TransferUnit::Sentence {
                o.sentences = Some(f.sentence_overlap(target, |t| crate::features::sentences(t, cfg.head.max_sentences)));
            }
            if o.total() > 0 {
                tracing::warn!(train = o.train, validation = o.validation, test = o.test,
                    "target texts found among the texts the server's network was pretrained on: their accuracy is not transfer (report.md, Data)");
            }
            if let Some(s) = o.sentences.as_ref().filter(|s| s.found.iter().sum::<usize>() > 0) {
                tracing::warn!(train = s.found[0], validation = s.found[1], test = s.found[2],
                    "target sentences found among the texts the server's network was pretrained on: their texts' accuracy is partly not transfer (report.md, Data)");
            }
            OverlapCheck::Checked(o)
        }
        Err(reason) => {
            tracing::info!(%reason, "target texts not checked against the server's source texts");
            OverlapCheck::NotChecked { reason }
        }
    }
}

/// The loss attack ([`crate::membership::attack_source`]) on `lower`'s plaintext outputs for `source`, members and
/// non-members drawn by the run's membership seed stream.
pub fn measure_membership(cfg: &RunConfig, lower: &PretrainedLower, source: &Split) -> Result<crate::membership::MembershipAttack> {
    crate::membership::attack_source(source, crate::seeds::stream(cfg.seed, crate::seeds::MEMBERSHIP), |texts| {
        lower_forward(&lower.net, &lower.features.transform(texts)?)
    })
}
