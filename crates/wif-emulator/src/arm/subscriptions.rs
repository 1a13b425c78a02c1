//! ARM subscriptions and resource groups: list, get, and put of a resource group.

use super::*;

pub(super) fn subscription_json(tenant_id: &str, s: &Subscription) -> Value {
    json!({
        "id": format!("/subscriptions/{}", s.id),
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": s.id,
        "tenantId": tenant_id,
        "displayName": s.display_name,
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    })
}

pub(super) fn group_json(subscription: &str, g: &ResourceGroup) -> Value {
    json!({
        "id": format!("/subscriptions/{subscription}/resourceGroups/{}", g.name),
        "name": g.name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": g.location,
        "properties": { "provisioningState": "Succeeded" },
    })
}

/// `/subscriptions[/{id}[/resourcegroups[/{rg}]]]`.
pub(super) async fn subscriptions(
    app: &App,
    caller: &Caller,
    method: &Method,
    segments: &[String],
    _api_version: String,
    body: &[u8],
) -> Result<Response, ArmError> {
    let tenant_id = caller.tenant_id.clone();
    if segments.len() == 1 {
        if *method != Method::GET {
            return Err(method_not_allowed(method));
        }
        let value: Vec<Value> = app
            .store
            .read(|s| {
                s.tenant(&tenant_id)
                    .map(|t| {
                        t.subscriptions
                            .iter()
                            .map(|sub| subscription_json(&t.id, sub))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .await;
        let count = value.len();
        return Ok(
            Json(json!({ "value": value, "count": { "type": "Total", "value": count } })).into_response(),
        );
    }
    let id = segments[1].clone();
    // A subscription of another tenant is as invisible as a missing one.
    let found = app
        .store
        .read(|s| {
            s.subscription(&id)
                .filter(|(t, _)| t.id.eq_ignore_ascii_case(&tenant_id))
                .map(|(t, sub)| (t.id.clone(), sub.clone()))
        })
        .await;
    let Some((owner, subscription)) = found else {
        return Err(subscription_not_found(&id));
    };
    match (segments.len(), method.clone()) {
        (2, Method::GET) => Ok(Json(subscription_json(&owner, &subscription)).into_response()),
        (3, Method::GET) => {
            let value: Vec<Value> = subscription
                .resource_groups
                .iter()
                .map(|g| group_json(&subscription.id, g))
                .collect();
            Ok(Json(json!({ "value": value })).into_response())
        }
        (4, Method::GET) => {
            let group = subscription
                .group(&segments[3])
                .ok_or_else(|| group_not_found(&segments[3]))?;
            Ok(Json(group_json(&subscription.id, group)).into_response())
        }
        (4, Method::PUT) => put_group(app, &owner, &subscription.id, &segments[3], body).await,
        _ => Err(method_not_allowed(method)),
    }
}

pub(super) async fn put_group(
    app: &App,
    tenant_id: &str,
    subscription: &str,
    name: &str,
    body: &[u8],
) -> Result<Response, ArmError> {
    if !valid_group_name(name) {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidResourceGroup",
            format!(
                "The provided resource group name '{name}' has these invalid characters: ''. The name can only be a letter, digit, '-', '.', '(', ')' or '_'."
            ),
        ));
    }
    let map = parse_body(body)?;
    let location = match map.get("location") {
        Some(Value::String(l)) if !l.is_empty() => l.clone(),
        _ => {
            return Err(ArmError::new(
                StatusCode::BAD_REQUEST,
                "LocationRequired",
                "The location property is required for this definition.",
            ));
        }
    };
    let (created, group) = app
        .store
        .update(|s| {
            let sub = s
                .tenant_mut(tenant_id)
                .and_then(|t| t.subscriptions.iter_mut().find(|x| x.id.eq_ignore_ascii_case(subscription)))
                .ok_or_else(|| subscription_not_found(subscription))?;
            if let Some(group) = sub.resource_groups.iter().find(|g| g.name.eq_ignore_ascii_case(name)) {
                if !group.location.eq_ignore_ascii_case(&location) {
                    return Err(ArmError::new(
                        StatusCode::CONFLICT,
                        "InvalidResourceGroupLocation",
                        format!(
                            "Invalid resource group location '{location}'. The Resource group already exists in location '{}'.",
                            group.location
                        ),
                    ));
                }
                return Ok::<_, ArmError>((false, group.clone()));
            }
            let group = ResourceGroup {
                name: name.to_string(),
                location,
            };
            sub.resource_groups.push(group.clone());
            Ok((true, group))
        })
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(group_json(subscription, &group))).into_response())
}
