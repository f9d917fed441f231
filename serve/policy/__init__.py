"""The request policy both paths to a model enforce, written once (``request_policy.py``): keys and
their scopes (``auth.py``), per-key limits (``key_limits.py``) and token metering
(``metering.py``), chat media fetched under the operator's policy (``media_refs.py``), request ids
and metrics (``observed.py``). The router's app and each vLLM replica's own HTTP app mount it."""
