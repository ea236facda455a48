//! Which model family `infer` serves: the encoder champion when ONNX Runtime's CUDA execution provider
//! really came up (the GPU tier), the hashed champion otherwise (the CPU tier), or what `--family`
//! forces; an encoder request without an encoder champion keeps serving the hashed one and says so.

use sentiflow_model::runtime::Device;
use sentiflow_trainer::registry::{Registry, RegistryError};

/// `--family`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyArg {
    /// The encoder family when the CUDA execution provider is up and an encoder champion exists,
    /// otherwise the hashed family.
    Auto,
    /// The hashed family (`--model-name`).
    Hashed,
    /// The encoder family (`--encoder-model-name`), falling back to the hashed champion while no
    /// encoder champion exists.
    Encoder,
}

/// What the registry says about the encoder champion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncoderChampion {
    /// There is one.
    Present,
    /// There is none yet.
    Missing,
    /// The registry could not be asked (the reason).
    Unknown(String),
}

/// The registry name to serve and why (logged, on `/healthz` as `family_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyChoice {
    /// Registry name whose champion is served.
    pub model_name: String,
    /// `hashed` or `encoder`: the family that name was picked for.
    pub family: &'static str,
    /// Why.
    pub reason: String,
}

/// Decides the served name from `--family`, the device ORT really gave and the encoder champion's
/// state (`None`: not asked, because the answer could not change the choice).
pub fn decide(
    family: FamilyArg,
    device: Device,
    encoder_champion: Option<&EncoderChampion>,
    hashed_name: &str,
    encoder_name: &str,
) -> FamilyChoice {
    let hashed = |reason: String| FamilyChoice {
        model_name: hashed_name.to_owned(),
        family: "hashed",
        reason,
    };
    let why = match family {
        FamilyArg::Hashed => return hashed("requested: --family hashed".to_owned()),
        FamilyArg::Auto if device != Device::Cuda => {
            return hashed(format!(
                "auto: the {} execution provider serves the hashed family (the encoder is the GPU tier)",
                device.as_str()
            ));
        }
        FamilyArg::Auto => "auto: the CUDA execution provider is up",
        FamilyArg::Encoder => "requested: --family encoder",
    };
    match encoder_champion {
        Some(EncoderChampion::Present) => FamilyChoice {
            model_name: encoder_name.to_owned(),
            family: "encoder",
            reason: format!("{why}; serving the champion of {encoder_name}"),
        },
        Some(EncoderChampion::Missing) | None => hashed(format!(
            "{why}, but {encoder_name} has no champion in the registry; serving {hashed_name} \
             (train one with `sentiflow train --family encoder --promote`, then restart)"
        )),
        Some(EncoderChampion::Unknown(error)) => hashed(format!(
            "{why}, but the registry could not say whether {encoder_name} has a champion ({error}); \
             serving {hashed_name}"
        )),
    }
}

/// [`decide`], asking the registry only when the answer matters.
pub async fn choose(
    family: FamilyArg,
    device: Device,
    registry: &Registry,
    hashed_name: &str,
    encoder_name: &str,
) -> FamilyChoice {
    let asks =
        family == FamilyArg::Encoder || (family == FamilyArg::Auto && device == Device::Cuda);
    let champion = if asks {
        Some(match registry.resolve(encoder_name, "champion").await {
            Ok(_) => EncoderChampion::Present,
            Err(RegistryError::NotFound(_)) => EncoderChampion::Missing,
            Err(error) => EncoderChampion::Unknown(error.to_string()),
        })
    } else {
        None
    };
    decide(family, device, champion.as_ref(), hashed_name, encoder_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(choice: &FamilyChoice) -> &str {
        &choice.model_name
    }

    #[test]
    fn auto_serves_the_encoder_only_on_a_real_cuda_provider_with_a_champion() {
        let present = EncoderChampion::Present;
        let choice = decide(FamilyArg::Auto, Device::Cuda, Some(&present), "h", "e");
        assert_eq!((name(&choice), choice.family), ("e", "encoder"));
        let choice = decide(FamilyArg::Auto, Device::Cpu, Some(&present), "h", "e");
        assert_eq!(name(&choice), "h");
        assert!(
            choice.reason.contains("cpu execution provider"),
            "{}",
            choice.reason
        );
    }

    #[test]
    fn a_missing_encoder_champion_keeps_the_hashed_one_and_says_so() {
        for family in [FamilyArg::Auto, FamilyArg::Encoder] {
            let choice = decide(
                family,
                Device::Cuda,
                Some(&EncoderChampion::Missing),
                "h",
                "e",
            );
            assert_eq!(name(&choice), "h");
            assert!(
                choice.reason.contains("e has no champion"),
                "{}",
                choice.reason
            );
        }
        let unknown = EncoderChampion::Unknown("connection refused".to_owned());
        let choice = decide(FamilyArg::Encoder, Device::Cpu, Some(&unknown), "h", "e");
        assert_eq!(name(&choice), "h");
        assert!(choice.reason.contains("connection refused"));
    }

    #[test]
    fn explicit_families_win() {
        let present = EncoderChampion::Present;
        assert_eq!(
            name(&decide(
                FamilyArg::Hashed,
                Device::Cuda,
                Some(&present),
                "h",
                "e"
            )),
            "h"
        );
        let choice = decide(FamilyArg::Encoder, Device::Cpu, Some(&present), "h", "e");
        assert_eq!(name(&choice), "e");
        assert!(choice.reason.contains("requested"));
    }
}
