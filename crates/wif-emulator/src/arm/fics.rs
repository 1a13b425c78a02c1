//! ARM's federated identity credentials of a user-assigned identity: list, get, put (create or update under the identity's write lock), delete.

use super::*;

pub(super) async fn list_credentials(ctx: &Ctx<'_>, scope: &Scope, name: &str) -> Result<Response, ArmError> {
    let (_, identity) = find_identity(ctx, scope, name)
        .await
        .ok_or_else(parent_not_found)?;
    let top = match ctx.query.get("$top").and_then(Value::as_str) {
        None => None,
        Some(t) => Some(
            t.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ArmError::bad_request(format!("The value '{t}' of $top is invalid.")))?,
        ),
    };
    let skip = ctx
        .query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("$skiptoken"))
        .and_then(|(_, v)| v.as_str())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let page_size = top.unwrap_or(usize::MAX);
    let value: Vec<Value> = identity
        .credentials
        .iter()
        .skip(skip)
        .take(page_size)
        .map(|c| credential_json(ctx, &identity, c))
        .collect();
    let mut body = json!({ "value": value });
    let next = skip.saturating_add(page_size);
    if next < identity.credentials.len() {
        body["nextLink"] = Value::from(format!(
            "{}/arm{}?api-version={}&$top={page_size}&$skiptoken={next}",
            ctx.app.base_url, ctx.path, ctx.api_version
        ));
    }
    Ok(Json(body).into_response())
}

pub(super) async fn get_credential(
    ctx: &Ctx<'_>,
    scope: &Scope,
    name: &str,
    fic: &str,
) -> Result<Response, ArmError> {
    let (_, identity) = find_identity(ctx, scope, name)
        .await
        .ok_or_else(parent_not_found)?;
    let credential = identity
        .credentials
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(fic))
        .ok_or_else(|| {
            ArmError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("The federated identity credential '{fic}' was not found."),
            )
        })?;
    Ok(Json(credential_json(ctx, &identity, credential)).into_response())
}

/// The per-identity write window: a second writer while it is held gets 409.
pub(super) async fn write_lock(
    ctx: &Ctx<'_>,
    scope: &Scope,
    name: &str,
) -> Result<tokio::sync::OwnedMutexGuard<()>, ArmError> {
    let resource_id = format!(
        "/subscriptions/{}/resourcegroups/{}/providers/microsoft.managedidentity/userassignedidentities/{}",
        scope.subscription, scope.group, name
    )
    .to_ascii_lowercase();
    let guard = ctx.app.arm_lock(&resource_id).try_lock_owned().map_err(|_| {
        tracing::info!(identity = %resource_id, "arm: concurrent credential write refused");
        ArmError::new(
            StatusCode::CONFLICT,
            "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
            format!(
                "Too many Federated Identity Credentials are written concurrently for the managed identity '{resource_id}'. Concurrent Federated Identity Credentials writes under the same managed identity are not supported."
            ),
        )
    })?;
    let hold = ctx.app.settings().arm_write_hold_ms;
    if hold > 0 {
        tokio::time::sleep(Duration::from_millis(hold)).await;
    }
    Ok(guard)
}

/// The credential a PUT body describes (`properties.issuer`, `subject`, `audiences`, and
/// `claimsMatchingExpression` for the API versions that have it), before any directory check.
fn candidate_from_body(ctx: &Ctx<'_>, fic: &str, body: &[u8]) -> Result<Credential, ArmError> {
    let map = parse_body(body)?;
    let properties = match map.get("properties") {
        Some(Value::Object(p)) if !p.is_empty() => p.clone(),
        _ => {
            return Err(ArmError::bad_request(
                "Federated Identity Credential from HTTP body has empty properties",
            ));
        }
    };
    credentials::validate_name(fic, true).map_err(violation)?;
    let string = |key: &str| -> Result<Option<String>, ArmError> {
        match properties.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(violation(Violation::Missing("issuer"))),
        }
    };
    let issuer = string("issuer")?;
    let subject = string("subject")?;
    let audiences = match properties.get("audiences") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| violation(Violation::Missing("audiences")))?,
        ),
        Some(_) => return Err(violation(Violation::Missing("audiences"))),
    };
    let expression = if FLEXIBLE_API_VERSIONS.contains(&ctx.api_version) {
        properties
            .get("claimsMatchingExpression")
            .filter(|v| !v.is_null())
            .cloned()
    } else {
        None
    };
    let (Some(issuer), Some(audiences)) = (issuer, audiences) else {
        return Err(violation(Violation::Missing("issuer")));
    };
    if subject.is_none() && expression.is_none() {
        return Err(violation(Violation::Missing("subject")));
    }
    Ok(Credential {
        id: Uuid::new_v4().to_string(),
        name: fic.to_string(),
        issuer,
        subject,
        audiences,
        description: None,
        claims_matching_expression: expression,
        visible_after_ms: 0,
        previous: None,
    })
}

pub(super) async fn put_credential(
    ctx: &Ctx<'_>,
    scope: &Scope,
    name: &str,
    fic: &str,
    body: &[u8],
) -> Result<Response, ArmError> {
    let settings = ctx.app.settings();
    let mut candidate = candidate_from_body(ctx, fic, body)?;
    credentials::validate_values(&candidate).map_err(violation)?;

    let _guard = write_lock(ctx, scope, name).await?;
    let (created, identity, credential) = ctx
        .app
        .store
        .update(|s| {
            let (ti, ii) = s
                .identity_position(&scope.subscription, &scope.group, name)
                .ok_or_else(parent_not_found)?;
            let identity = &mut s.tenants[ti].identities[ii];
            let now = now_ms();
            let existing = identity
                .credentials
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(fic));
            if let Some(index) = existing {
                let current = &identity.credentials[index];
                candidate.id = current.id.clone();
                candidate.name = current.name.clone();
                if candidate.matcher() == current.matcher() {
                    candidate.visible_after_ms = current.visible_after_ms;
                    candidate.previous = current.previous.clone();
                } else {
                    candidate.previous = current.honoured(now);
                    candidate.visible_after_ms = now.saturating_add(settings.propagation_delay_ms);
                }
            } else {
                candidate.visible_after_ms = now.saturating_add(settings.propagation_delay_ms);
            }
            credentials::check_collisions(
                &identity.credentials,
                &candidate,
                settings.max_credentials_per_parent,
            )
            .map_err(violation)?;
            match existing {
                Some(index) => identity.credentials[index] = candidate.clone(),
                None => identity.credentials.push(candidate.clone()),
            }
            Ok::<_, ArmError>((existing.is_none(), identity.clone(), candidate))
        })
        .await?;
    tracing::info!(
        identity = %identity.resource_id(),
        credential = %credential.name,
        created,
        "arm: wrote federated identity credential"
    );
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(credential_json(ctx, &identity, &credential))).into_response())
}

pub(super) async fn delete_credential(
    ctx: &Ctx<'_>,
    scope: &Scope,
    name: &str,
    fic: &str,
) -> Result<Response, ArmError> {
    if find_identity(ctx, scope, name).await.is_none() {
        return Err(parent_not_found());
    }
    let _guard = write_lock(ctx, scope, name).await?;
    let deleted = ctx
        .app
        .store
        .update(|s| {
            let (ti, ii) = s
                .identity_position(&scope.subscription, &scope.group, name)
                .ok_or_else(parent_not_found)?;
            let credentials = &mut s.tenants[ti].identities[ii].credentials;
            let Some(index) = credentials.iter().position(|c| c.name.eq_ignore_ascii_case(fic)) else {
                return Ok::<_, ArmError>(false);
            };
            credentials.remove(index);
            Ok(true)
        })
        .await?;
    Ok(if deleted {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    }
    .into_response())
}
