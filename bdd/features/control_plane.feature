Feature: Control plane
  Operators with an admin key see pools, their health, loaded adapters and capabilities,
  drain pools, and manage the model catalog. Data keys cannot.

  Background:
    Given the daemon config:
      """
      [[auth.keys]]
      name = "ops"
      role = "admin"
      key = "ops-bdd-key"

      [[auth.keys]]
      name = "app"
      role = "data"
      key = "app-bdd-key"
      """
    And a mock pool "p" with "slots = 1, tokens_per_s = 20.0"
    And a mock pool "warming" with "ready = false"
    And the daemon is running

  Scenario: Pool health
    When I use the key "ops-bdd-key"
    And I send GET "/v1/pools/p/health"
    Then the response status is 200
    And the response field "/ready" is "true"
    And the response field "/metrics/slots_total" is "1"
    When I send GET "/v1/pools/warming/health"
    Then the response field "/ready" is "false"
    And the response field "/live" is "true"
    When I send GET "/v1/pools/nowhere/health"
    Then the response status is 404 with code "NOT_FOUND"
    When I use the key "app-bdd-key"
    And I send GET "/v1/pools"
    Then the response status is 403 with code "FORBIDDEN"

  Scenario: Capabilities and adapters are what is loaded
    When I use the key "ops-bdd-key"
    And I send GET "/v1/capabilities"
    Then the response status is 200
    And the response field "/api_version" is "1.0.0"
    When I send GET "/v1/adapters"
    Then the response status is 200
    And the response lists an adapter "llamacpp"
    And the response lists an adapter "mock"

  Scenario: Drain a pool
    When I use the key "ops-bdd-key"
    And I submit to pool "p" a task with '{"max_tokens": 2000, "expected_tokens": 5}'
    And I send POST "/v1/pools/p/drain" with body '{"deadline_ms": 300}'
    Then the response status is 202
    When I send POST "/v1/pools/p/drain" with body '{"deadline_ms": 300}'
    Then the response status is 409 with code "CONFLICT"
    When I submit to pool "p" a task with '{"max_tokens": 2}'
    Then the response status is 503 with code "POOL_UNAVAILABLE"
    When I read the task's stream
    Then the stream ends with an "error" frame with code "POOL_UNAVAILABLE"

  Scenario: Catalog lifecycle
    When I use the key "ops-bdd-key"
    And I send POST "/v1/catalog/models" with body '{"id": "p-model", "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000", "source_url": "hf:org/repo"}'
    Then the response status is 201
    When I send POST "/v1/catalog/models/p-model/state" with body '{"state": "Retired"}'
    Then the response status is 202
    When I submit to pool "p" a task with '{"max_tokens": 2}'
    Then the response status is 410 with code "MODEL_DEPRECATED"
    When I send GET "/v1/catalog/models/p-model"
    Then the response field "/state" is "Retired"

  Scenario: Reload needs launched replicas
    When I use the key "ops-bdd-key"
    And I send POST "/v1/pools/p/reload" with body '{"new_model_ref": "file:/models/next.gguf"}'
    Then the response status is 400 with code "INVALID_PARAMS"
    When I send POST "/v1/pools/nowhere/reload" with body '{"new_model_ref": "x"}'
    Then the response status is 404 with code "NOT_FOUND"
