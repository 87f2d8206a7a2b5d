//! `/v1/models` and `/v1/models/{id}`: answered by the filter itself, from
//! the caller's subscription, so a caller sees exactly the models it may use.

use super::Stream;
use crate::error::GatewayError;
use crate::host::{Flow, StreamHost};
use crate::metrics::{Metric, Outcome};

impl Stream {
    fn allowed_models(&self) -> &[String] {
        self.identity
            .as_ref()
            .map_or(&[], |i| i.subscription.models.as_slice())
    }

    pub(super) fn list_models(&mut self, host: &dyn StreamHost) -> Flow {
        host.add_metric(Metric::ModelListings, 1);
        let data: Vec<serde_json::Value> = self
            .allowed_models()
            .iter()
            .map(|m| model_object(m))
            .collect();
        let body = serde_json::json!({ "object": "list", "data": data });
        self.reply_json(host, &body)
    }

    pub(super) fn retrieve_model(&mut self, host: &dyn StreamHost, id: &str) -> Flow {
        host.add_metric(Metric::ModelListings, 1);
        if self.allowed_models().iter().any(|m| m == id) {
            let body = model_object(id);
            self.reply_json(host, &body)
        } else {
            let err = GatewayError::ModelNotFound(id.chars().take(128).collect());
            self.refuse(host, Outcome::Rejected, &err)
        }
    }

    fn reply_json(&mut self, host: &dyn StreamHost, body: &serde_json::Value) -> Flow {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.reply(host, 200, &[("content-type", "application/json")], &bytes);
        Flow::Pause
    }
}

fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": "maas" })
}
