//! `wif crd`: the CustomResourceDefinitions, as YAML (`wif crd | kubectl apply -f -`).

use std::{io::Write, process::ExitCode};

use clap::{Args, ValueEnum};
use kube::CustomResourceExt;
use wif_api::{FederatedIdentityBinding, FederatedIdentityPolicy, FederatedIdentityPool};

/// Which CRDs to print.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub(crate) enum Which {
    /// All of them.
    #[default]
    All,
    /// `FederatedIdentityBinding`.
    Binding,
    /// `FederatedIdentityPolicy`.
    Policy,
    /// `FederatedIdentityPool`.
    Pool,
}

/// Flags of `wif crd`.
#[derive(Debug, Args)]
pub(crate) struct CrdArgs {
    /// Which CRDs to print.
    #[arg(long, value_enum, default_value = "all")]
    only: Which,
}

/// The YAML documents, `---`-separated.
pub(crate) fn render(which: Which) -> Result<String, String> {
    let crds = match which {
        Which::All => vec![
            FederatedIdentityBinding::crd(),
            FederatedIdentityPolicy::crd(),
            FederatedIdentityPool::crd(),
        ],
        Which::Binding => vec![FederatedIdentityBinding::crd()],
        Which::Policy => vec![FederatedIdentityPolicy::crd()],
        Which::Pool => vec![FederatedIdentityPool::crd()],
    };
    let mut out = String::new();
    for crd in crds {
        let yaml = serde_saphyr::to_string(&crd).map_err(|e| e.to_string())?;
        out.push_str("---\n");
        out.push_str(&yaml);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// Prints the CRDs.
pub(crate) fn run(args: CrdArgs) -> ExitCode {
    match render(args.only) {
        Ok(yaml) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(yaml.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: failed to render the CRDs: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_crd_as_yaml_that_parses_back() {
        let yaml = render(Which::All).unwrap();
        assert_eq!(yaml.matches("---\n").count(), 3);
        assert!(yaml.contains("federatedidentitypools.azure.workload.identity"));
        assert!(yaml.contains("federatedidentitybindings.azure.workload.identity"));
        assert!(yaml.contains("federatedidentitypolicies.azure.workload.identity"));
        for doc in yaml.split("---\n").filter(|d| !d.trim().is_empty()) {
            let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
                serde_saphyr::from_str(doc).unwrap();
            assert_eq!(crd.spec.group, "azure.workload.identity");
        }
    }
}
