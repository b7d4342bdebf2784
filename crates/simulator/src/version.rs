//! How the simulator writes and reads OCPP versions for people, and the mix of them in a
//! load.

use std::{fmt, str::FromStr};

use ocpp::OcppVersion;

/// The version as people write it on the command line and read it in summaries: `1.6`,
/// `2.0.1` or `2.1` (the subprotocol without its `ocpp` prefix).
pub fn number(version: OcppVersion) -> &'static str {
    match version {
        OcppVersion::V16 => "1.6",
        OcppVersion::V201 => "2.0.1",
        OcppVersion::V21 => "2.1",
    }
}

/// Reads a version from the command line: `1.6`, `2.0.1` or `2.1`, also without dots
/// (`16`, `201`, `21`) or with the subprotocol's `ocpp` prefix (`ocpp1.6`).
pub fn parse(text: &str) -> Result<OcppVersion, String> {
    match text.trim().trim_start_matches("ocpp") {
        "1.6" | "16" => Ok(OcppVersion::V16),
        "2.0.1" | "201" => Ok(OcppVersion::V201),
        "2.1" | "21" => Ok(OcppVersion::V21),
        other => Err(format!(
            "unknown OCPP version {other:?}; use 1.6, 2.0.1 or 2.1"
        )),
    }
}

/// How many charge points of each version a load has, as relative weights.
///
/// Written `1.6=50,2.0.1=30,2.1=20`; a version alone (`2.0.1`) means all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMix {
    weights: Vec<(OcppVersion, u32)>,
    /// One cycle of the deal, `sum(weights)` long (after dividing by their gcd).
    cycle: Vec<OcppVersion>,
}

/// The longest deal cycle; weights are percentages or small ratios in practice.
const MAX_CYCLE: u32 = 10_000;

impl VersionMix {
    fn new(weights: Vec<(OcppVersion, u32)>) -> Result<Self, String> {
        let divisor = weights.iter().fold(0, |acc, (_, w)| gcd(acc, *w));
        if divisor == 0 {
            return Err("the version mix needs at least one version with a weight above 0".into());
        }
        let reduced: Vec<(OcppVersion, u32)> =
            weights.iter().map(|(v, w)| (*v, w / divisor)).collect();
        let sum: u32 = reduced.iter().map(|(_, w)| w).sum();
        if sum > MAX_CYCLE {
            return Err(format!(
                "the version mix's weights are too fine-grained (reduced sum {sum} > {MAX_CYCLE}); use percentages"
            ));
        }
        // Smooth weighted round robin: every prefix of the fleet is close to the mix's
        // proportions, so a ramp that stops early still sees every version.
        let mut current: Vec<i64> = vec![0; reduced.len()];
        let mut cycle = Vec::with_capacity(sum as usize);
        for _ in 0..sum {
            for (i, (_, w)) in reduced.iter().enumerate() {
                current[i] += i64::from(*w);
            }
            let (chosen, _) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
                .expect("the mix is not empty");
            current[chosen] -= i64::from(sum);
            cycle.push(reduced[chosen].0);
        }
        Ok(VersionMix { weights, cycle })
    }

    /// The version of charge point number `index` (0-based).
    pub fn version_of(&self, index: usize) -> OcppVersion {
        self.cycle[index % self.cycle.len()]
    }

    /// The versions with a weight above zero.
    pub fn versions(&self) -> impl Iterator<Item = OcppVersion> + '_ {
        self.weights.iter().filter(|(_, w)| *w > 0).map(|(v, _)| *v)
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Default for VersionMix {
    fn default() -> Self {
        VersionMix::new(vec![(OcppVersion::V16, 1)]).expect("a single version is a valid mix")
    }
}

impl FromStr for VersionMix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (version, weight) = match part.split_once('=') {
                Some((version, weight)) => (
                    parse(version)?,
                    weight.trim().parse::<u32>().map_err(|_| {
                        format!("weight {weight:?} in {part:?} is not a whole number")
                    })?,
                ),
                None => (parse(part)?, 1),
            };
            if weights.iter().any(|(v, _)| *v == version) {
                return Err(format!(
                    "version {} appears twice in the mix",
                    number(version)
                ));
            }
            weights.push((version, weight));
        }
        VersionMix::new(weights)
    }
}

impl fmt::Display for VersionMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(v, w)| format!("{}={w}", number(*v)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_and_mixes() {
        assert_eq!(parse("ocpp2.0.1"), Ok(OcppVersion::V201));
        assert_eq!(parse(" 21 "), Ok(OcppVersion::V21));
        assert!(parse("3.0").is_err());
        let mix: VersionMix = "1.6=2,2.1=1".parse().unwrap();
        assert_eq!(mix.to_string(), "1.6=2,2.1=1");
        assert!("1.6=x".parse::<VersionMix>().is_err());
        assert!("1.6=0".parse::<VersionMix>().is_err());
        assert!("1.6,1.6".parse::<VersionMix>().is_err());
    }

    #[test]
    fn deals_versions_in_proportion_and_interleaved() {
        let mix: VersionMix = "1.6=50,2.0.1=30,2.1=20".parse().unwrap();
        let mut counts = std::collections::HashMap::new();
        for i in 0..100 {
            *counts.entry(mix.version_of(i)).or_insert(0) += 1;
        }
        assert_eq!(counts[&OcppVersion::V16], 50);
        assert_eq!(counts[&OcppVersion::V201], 30);
        assert_eq!(counts[&OcppVersion::V21], 20);
        // The first ten already contain every version.
        let first: std::collections::HashSet<_> = (0..10).map(|i| mix.version_of(i)).collect();
        assert_eq!(first.len(), 3);
    }
}
