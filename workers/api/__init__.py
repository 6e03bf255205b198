"""The HTTP gateway: events in over HTTP, produced to Kafka; predictions; learner, model and lag status out.

``create_app`` (``workers.api.app``) builds the FastAPI app; ``run_api``
(``workers.api.server``) serves it with uvicorn (``learnloop worker api``).

=====================================  =======  =========================================================
route                                  key      does
=====================================  =======  =========================================================
``POST /v1/feedback``                  write    one ``FeedbackEvent`` or a JSON array of them -> Kafka
``POST /v1/predictions``               write    ``PredictionEvent`` (one or an array)
``POST /v1/conversations``             write    ``ConversationEvent`` (one or an array)
``POST /v1/predict/{learner}``         predict  the learner's served version answers; logged as ``PredictionEvent``
``GET /v1/learners``                   read     learner statuses, recent drifts, the version served per learner
``GET /v1/models``                     read     registered model versions and aliases (MLflow)
``GET /v1/lag``                        read     consumer lag rows (the lag monitor)
``GET /healthz``, ``/readyz``          none     process up; broker and Redis reachable
``GET /metrics``                       none     Prometheus text format
``GET /openapi.json``, ``/docs``       none     the API description
``GET /status`` (``/`` redirects)      none     the status page (its data calls use a read key)
=====================================  =======  =========================================================

Importing this package imports nothing: ``python -m workers.api.keys`` stays light.
"""
