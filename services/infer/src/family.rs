//! Which model family `infer` serves: the encoder champion when ONNX Runtime's CUDA execution provider
//! really came up (the GPU tier), the hashed champion otherwise (the CPU tier), or what `--family`
//! forces; an encoder request without an encoder champion keeps serving the hashed one, says so, and
//! switches when the first encoder champion appears.

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
    /// The family to switch to once it has a champion (an encoder request that found none).
    pub switch_to: Option<crate::swap::FamilySwitch>,
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
        switch_to: None,
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
    let serving_encoder = format!("{why}; serving the champion of {encoder_name}");
    let waiting = |reason: String| FamilyChoice {
        switch_to: Some(crate::swap::FamilySwitch {
            model_name: encoder_name.to_owned(),
            family: "encoder",
            reason: format!("{serving_encoder} (switched when it was promoted)"),
        }),
        ..hashed(reason)
    };
    match encoder_champion {
        Some(EncoderChampion::Present) => FamilyChoice {
            model_name: encoder_name.to_owned(),
            family: "encoder",
            reason: serving_encoder,
            switch_to: None,
        },
        Some(EncoderChampion::Missing) | None => waiting(format!(
            "{why}, but {encoder_name} has no champion in the registry; serving {hashed_name} \
             until one is promoted (`sentiflow train --family encoder --promote`)"
        )),
        Some(EncoderChampion::Unknown(error)) => waiting(format!(
            "{why}, but the registry could not say whether {encoder_name} has a champion ({error}); \
             serving {hashed_name} until it does"
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
            let switch = choice.switch_to.expect("waits for the encoder champion");
            assert_eq!(
                (switch.model_name.as_str(), switch.family),
                ("e", "encoder")
            );
        }
        let unknown = EncoderChampion::Unknown("connection refused".to_owned());
        let choice = decide(FamilyArg::Encoder, Device::Cpu, Some(&unknown), "h", "e");
        assert_eq!(name(&choice), "h");
        assert!(choice.reason.contains("connection refused"));
        assert!(choice.switch_to.is_some());
        let cpu = decide(FamilyArg::Auto, Device::Cpu, None, "h", "e");
        assert!(cpu.switch_to.is_none(), "the CPU tier never switches");
        let hashed = decide(FamilyArg::Hashed, Device::Cuda, None, "h", "e");
        assert!(hashed.switch_to.is_none());
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
