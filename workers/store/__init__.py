"""The SQL store: labelled feedback for training, and the training jobs' records.

SQLite by default (``DATA_DIR/learnloop.db``), PostgreSQL by URL
(``LEARNLOOP_DATABASE__URL``), the schema managed by Alembic.

- ``config``: ``DatabaseConfig`` (the ``database`` settings section), ``database_url``.
- ``engine``: ``make_engine``/``engine_for``; outages become ``StoreUnavailable``.
- ``migrate``: ``upgrade(url)``, ``current_revision(url)``; ``python -m workers.store.migrate``.
- ``models``: the tables (``FeedbackSample``, ``TrainingJob``, ``JobRequest``).
- ``samples``: ``SampleIn`` and ``Sample``, plain values; ``SampleLike``, what ``add_many`` reads.
- ``feedback``: ``FeedbackStore``, idempotent batched writes and training windows.
- ``datasets``: ``build_dataset`` (dedup, validation, report) and a stratified ``split``.
- ``jobs``: ``JobStore``, coalesced retrain requests, guarded job transitions, stale-job recovery.

Modules are imported one by one (nothing here), so that the settings can load
``config`` without loading SQLAlchemy.
"""
