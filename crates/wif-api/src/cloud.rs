//! Azure clouds and their Entra authority hosts.

use std::{fmt, str::FromStr};

/// A sovereign Azure cloud, named as upstream's `AZURE_ENVIRONMENT` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Cloud {
    /// Azure public cloud (`AzurePublicCloud`, also `AzureCloud`).
    #[default]
    Public,
    /// Azure US Government (`AzureUSGovernmentCloud`, also `AzureUSGovernment`).
    UsGovernment,
    /// Azure China, operated by 21Vianet (`AzureChinaCloud`).
    China,
}

impl Cloud {
    /// Every cloud, in the order they are listed in messages.
    pub const ALL: [Cloud; 3] = [Cloud::Public, Cloud::UsGovernment, Cloud::China];

    /// The canonical name, as upstream spells it.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Public => "AzurePublicCloud",
            Cloud::UsGovernment => "AzureUSGovernmentCloud",
            Cloud::China => "AzureChinaCloud",
        }
    }

    /// Entra authority host (with the trailing slash, as the SDKs expect it).
    pub fn authority_host(self) -> &'static str {
        match self {
            Cloud::Public => "https://login.microsoftonline.com/",
            Cloud::UsGovernment => "https://login.microsoftonline.us/",
            Cloud::China => "https://login.chinacloudapi.cn/",
        }
    }

    /// Audience Entra expects in federated tokens for this cloud.
    pub fn token_exchange_audience(self) -> &'static str {
        match self {
            Cloud::Public => "api://AzureADTokenExchange",
            Cloud::UsGovernment => "api://AzureADTokenExchangeUSGov",
            Cloud::China => "api://AzureADTokenExchangeChina",
        }
    }

    /// Microsoft Graph endpoint for this cloud.
    pub fn graph_endpoint(self) -> &'static str {
        match self {
            Cloud::Public => "https://graph.microsoft.com",
            Cloud::UsGovernment => "https://graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// Azure Resource Manager endpoint for this cloud.
    pub fn arm_endpoint(self) -> &'static str {
        match self {
            Cloud::Public => "https://management.azure.com",
            Cloud::UsGovernment => "https://management.usgovcloudapi.net",
            Cloud::China => "https://management.chinacloudapi.cn",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A cloud name that is none of the known ones.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown cloud {0:?}: expected one of AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud (case-insensitive)"
)]
pub struct CloudError(pub String);

impl FromStr for Cloud {
    type Err = CloudError;

    /// Case-insensitive, as upstream (go-autorest upper-cases the name). The empty string is the
    /// public cloud, as in upstream's configuration.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "azurepubliccloud" | "azurecloud" | "public" => Ok(Cloud::Public),
            "azureusgovernmentcloud" | "azureusgovernment" | "usgovernment" => Ok(Cloud::UsGovernment),
            "azurechinacloud" | "china" => Ok(Cloud::China),
            _ => Err(CloudError(s.to_owned())),
        }
    }
}

/// The value of `AZURE_AUTHORITY_HOST`: a known cloud's host or an explicit URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthorityHost(String);

impl AuthorityHost {
    /// An explicit authority URL (an emulator, a private cloud). It must be `https://`.
    pub fn custom(url: &str) -> Result<Self, CloudError> {
        let url = url.trim();
        if !url.starts_with("https://") || url.len() <= "https://".len() {
            return Err(CloudError(format!(
                "{url} (an authority host must be an https:// URL)"
            )));
        }
        Ok(Self(url.to_owned()))
    }

    /// Parses a cloud name or an `https://` URL.
    pub fn parse(value: &str) -> Result<Self, CloudError> {
        if value.trim().starts_with("https://") {
            Self::custom(value)
        } else {
            value.parse::<Cloud>().map(Self::from)
        }
    }

    /// The URL as written into the pod.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Cloud> for AuthorityHost {
    fn from(cloud: Cloud) -> Self {
        Self(cloud.authority_host().to_owned())
    }
}

impl fmt::Display for AuthorityHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_names_are_case_insensitive() {
        assert_eq!("azurepubliccloud".parse::<Cloud>(), Ok(Cloud::Public));
        assert_eq!("AZUREUSGOVERNMENTCLOUD".parse::<Cloud>(), Ok(Cloud::UsGovernment));
        assert_eq!("AzureUSGovernment".parse::<Cloud>(), Ok(Cloud::UsGovernment));
        assert_eq!("AzureChinaCloud".parse::<Cloud>(), Ok(Cloud::China));
        assert_eq!("".parse::<Cloud>(), Ok(Cloud::Public));
    }

    #[test]
    fn unknown_cloud_lists_the_known_ones() {
        let err = "AzureGermanCloud".parse::<Cloud>().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("AzureGermanCloud") && msg.contains("AzurePublicCloud"),
            "{msg}"
        );
    }

    #[test]
    fn every_cloud_round_trips_through_its_name() {
        for cloud in Cloud::ALL {
            assert_eq!(cloud.name().parse::<Cloud>(), Ok(cloud));
        }
    }

    #[test]
    fn authority_host_accepts_https_urls_and_cloud_names() {
        assert_eq!(
            AuthorityHost::parse("https://127.0.0.1:8443/").unwrap().as_str(),
            "https://127.0.0.1:8443/"
        );
        assert_eq!(
            AuthorityHost::parse("AzureChinaCloud").unwrap().as_str(),
            "https://login.chinacloudapi.cn/"
        );
        assert!(AuthorityHost::parse("http://insecure.example").is_err());
        assert!(AuthorityHost::custom("https://").is_err());
    }
}
