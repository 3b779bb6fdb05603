"""One router per resource of the control plane, included by ``app`` in
this order (the OpenAPI document lists them so)."""
