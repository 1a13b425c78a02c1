//! Graph's `federatedIdentityCredentials` of an application: list, get, create (and upsert), update, delete.

use super::*;

pub(super) async fn list_credentials(ctx: &Ctx<'_>, key: &AppKey) -> Result<Response, GraphError> {
    let clauses = match &ctx.query.filter {
        Some(filter) => parse_filter(filter, &["name", "subject", "issuer"], FIC_RESOURCE)?,
        None => Vec::new(),
    };
    let app = read_app(ctx, key).await?;
    let matching: Vec<&Credential> = app
        .credentials
        .iter()
        .filter(|c| {
            clauses.iter().all(|(prop, value)| match *prop {
                "name" => c.name.eq_ignore_ascii_case(value),
                "subject" => c.subject.as_deref() == Some(value.as_str()),
                _ => c.issuer == *value,
            })
        })
        .collect();
    let page_size = ctx.query.top.unwrap_or(usize::MAX);
    let value: Vec<Value> = matching
        .iter()
        .skip(ctx.query.skip)
        .take(page_size)
        .map(|c| project(ctx.fic_json(c), ctx.query.select.as_deref()))
        .collect();
    let mut body = json!({
        "@odata.context": format!("{}#applications('{}')/federatedIdentityCredentials", ctx.metadata(), app.id),
        "value": value,
    });
    // With `$top`, a page that leaves credentials out links to the next one.
    let next = ctx.query.skip.saturating_add(page_size);
    if next < matching.len() {
        let mut link = url::Url::parse(&format!(
            "{}/graph/{}/applications/{}/federatedIdentityCredentials",
            ctx.app.base_url, ctx.version, app.id
        ))
        .map_err(|e| {
            GraphError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "generalException",
                e.to_string(),
            )
        })?;
        {
            let mut pairs = link.query_pairs_mut();
            if let Some(filter) = &ctx.query.filter {
                pairs.append_pair("$filter", filter);
            }
            if let Some(select) = &ctx.query.select {
                pairs.append_pair("$select", &select.join(","));
            }
            pairs.append_pair("$top", &page_size.to_string());
            pairs.append_pair("$skiptoken", &next.to_string());
        }
        body["@odata.nextLink"] = Value::from(link.to_string());
    }
    Ok(Json(body).into_response())
}

pub(super) async fn get_credential(
    ctx: &Ctx<'_>,
    key: &AppKey,
    fic: &FicKey,
) -> Result<Response, GraphError> {
    let app = read_app(ctx, key).await?;
    let credential = fic
        .position(&app.credentials)
        .map(|i| &app.credentials[i])
        .ok_or_else(|| GraphError::not_found(fic.text()))?;
    Ok(entity_response(
        StatusCode::OK,
        format!(
            "{}#applications('{}')/federatedIdentityCredentials/$entity",
            ctx.metadata(),
            app.id
        ),
        ctx.fic_json(credential),
        ctx.query.select.as_deref(),
    ))
}

/// A credential body as sent (every property optional; `Some(None)` is an explicit null).
#[derive(Debug, Default)]
pub(super) struct FicBody {
    pub(super) name: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) subject: Option<Option<String>>,
    pub(super) audiences: Option<Vec<String>>,
    pub(super) description: Option<Option<String>>,
    pub(super) expression: Option<Option<Value>>,
}

pub(super) fn parse_fic_body(body: &[u8], beta: bool) -> Result<FicBody, GraphError> {
    let map = parse_object(body)?;
    let mut fic = FicBody::default();
    for (key, value) in &map {
        match key.as_str() {
            k if k.starts_with("@odata.") => {}
            "id" => {}
            "name" => match value {
                Value::String(s) => fic.name = Some(s.clone()),
                _ => return Err(invalid_value("name", FIC_RESOURCE)),
            },
            "issuer" => match value {
                Value::String(s) => fic.issuer = Some(s.clone()),
                _ => return Err(invalid_value("issuer", FIC_RESOURCE)),
            },
            "subject" => fic.subject = optional_string(&map, "subject", FIC_RESOURCE)?,
            "description" => fic.description = optional_string(&map, "description", FIC_RESOURCE)?,
            "audiences" => match value {
                Value::Array(items) => {
                    let audiences: Option<Vec<String>> =
                        items.iter().map(|v| v.as_str().map(str::to_string)).collect();
                    fic.audiences = Some(audiences.ok_or_else(|| invalid_value("audiences", FIC_RESOURCE))?);
                }
                _ => return Err(invalid_value("audiences", FIC_RESOURCE)),
            },
            "claimsMatchingExpression" if beta => match value {
                Value::Null => fic.expression = Some(None),
                Value::Object(_) => fic.expression = Some(Some(value.clone())),
                _ => return Err(invalid_value("claimsMatchingExpression", FIC_RESOURCE)),
            },
            other => {
                return Err(unknown_property(
                    other,
                    "microsoft.graph.federatedIdentityCredential",
                ));
            }
        }
    }
    Ok(fic)
}

pub(super) fn validate(
    candidate: &Credential,
    siblings: &[Credential],
    ctx: &Ctx<'_>,
) -> Result<(), GraphError> {
    let settings = ctx.app.settings();
    credentials::validate_name(&candidate.name, settings.strict_credential_names)
        .and_then(|()| credentials::validate_values(candidate))
        .and_then(|()| {
            credentials::check_collisions(siblings, candidate, settings.max_credentials_per_parent)
        })
        .map_err(violation)
}

pub(super) async fn create_credential(
    ctx: &Ctx<'_>,
    key: &AppKey,
    body: &[u8],
) -> Result<Response, GraphError> {
    let fic = parse_fic_body(body, ctx.beta())?;
    let name = fic
        .name
        .clone()
        .ok_or_else(|| invalid_value("name", FIC_RESOURCE))?;
    let (app_id, credential) = insert_credential(ctx, key, name, fic).await?;
    Ok(entity_response(
        StatusCode::CREATED,
        format!(
            "{}#applications('{app_id}')/federatedIdentityCredentials/$entity",
            ctx.metadata()
        ),
        ctx.fic_json(&credential),
        None,
    ))
}

pub(super) async fn insert_credential(
    ctx: &Ctx<'_>,
    key: &AppKey,
    name: String,
    fic: FicBody,
) -> Result<(String, Credential), GraphError> {
    let delay = ctx.app.settings().propagation_delay_ms;
    let credential = Credential {
        id: Uuid::new_v4().to_string(),
        name,
        issuer: fic.issuer.ok_or_else(|| invalid_value("issuer", FIC_RESOURCE))?,
        subject: fic.subject.flatten(),
        audiences: fic
            .audiences
            .ok_or_else(|| invalid_value("audiences", FIC_RESOURCE))?,
        description: fic.description.flatten(),
        claims_matching_expression: fic.expression.flatten(),
        visible_after_ms: now_ms().saturating_add(delay),
        previous: None,
    };
    let app_id = ctx
        .app
        .store
        .update(|s| {
            let app = find_app_mut(tenant_of_mut(s, &ctx.caller)?, key)?;
            validate(&credential, &app.credentials, ctx)?;
            app.credentials.push(credential.clone());
            Ok::<_, GraphError>(app.id.clone())
        })
        .await?;
    tracing::info!(
        tenant = %ctx.caller.tenant_id,
        application = %app_id,
        credential = %credential.name,
        "graph: created federated identity credential"
    );
    Ok((app_id, credential))
}

pub(super) async fn update_credential(
    ctx: &Ctx<'_>,
    key: &AppKey,
    fic_key: &FicKey,
    body: &[u8],
    prefer_create: bool,
) -> Result<Response, GraphError> {
    let fic = parse_fic_body(body, ctx.beta())?;
    let exists = fic_key.position(&read_app(ctx, key).await?.credentials).is_some();
    if !exists {
        // Upsert: `PATCH …/federatedIdentityCredentials(name='x')` with `Prefer: create-if-missing`.
        if let (FicKey::Name(name), true) = (fic_key, prefer_create) {
            if fic.name.as_ref().is_some_and(|n| n != name) {
                return Err(GraphError::bad_request(
                    "The name in the request body does not match the key.",
                ));
            }
            let (app_id, credential) = insert_credential(ctx, key, name.clone(), fic).await?;
            return Ok(entity_response(
                StatusCode::CREATED,
                format!(
                    "{}#applications('{app_id}')/federatedIdentityCredentials/$entity",
                    ctx.metadata()
                ),
                ctx.fic_json(&credential),
                None,
            ));
        }
        return Err(GraphError::not_found(fic_key.text()));
    }
    let delay = ctx.app.settings().propagation_delay_ms;
    ctx.app
        .store
        .update(|s| {
            let app = find_app_mut(tenant_of_mut(s, &ctx.caller)?, key)?;
            let index = fic_key
                .position(&app.credentials)
                .ok_or_else(|| GraphError::not_found(fic_key.text()))?;
            let current = &app.credentials[index];
            if let Some(name) = &fic.name
                && name != &current.name
            {
                return Err(GraphError::bad_request(
                    "Property 'name' is read-only and cannot be changed after creation.",
                ));
            }
            let mut updated = current.clone();
            if let Some(issuer) = fic.issuer {
                updated.issuer = issuer;
            }
            if let Some(subject) = fic.subject {
                updated.subject = subject;
            }
            if let Some(audiences) = fic.audiences {
                updated.audiences = audiences;
            }
            if let Some(description) = fic.description {
                updated.description = description;
            }
            if let Some(expression) = fic.expression {
                updated.claims_matching_expression = expression;
            }
            validate(&updated, &app.credentials, ctx)?;
            if updated.matcher() != current.matcher() {
                let now = now_ms();
                updated.previous = current.honoured(now);
                updated.visible_after_ms = now.saturating_add(delay);
            }
            app.credentials[index] = updated;
            Ok::<_, GraphError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn delete_credential(
    ctx: &Ctx<'_>,
    key: &AppKey,
    fic_key: &FicKey,
) -> Result<Response, GraphError> {
    ctx.app
        .store
        .update(|s| {
            let app = find_app_mut(tenant_of_mut(s, &ctx.caller)?, key)?;
            let index = fic_key
                .position(&app.credentials)
                .ok_or_else(|| GraphError::not_found(fic_key.text()))?;
            app.credentials.remove(index);
            Ok::<_, GraphError>(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
