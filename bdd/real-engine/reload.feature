Feature: Reload a launched engine onto another model
  The daemon launches llama-server itself. An operator drains the pool, reloads it onto
  another model (no request is dropped), and a reload onto a broken file rolls back (409).
  Runs in the real-engine tier (`cargo xtask e2e`).

  Scenario: Reload succeeds, a broken model rolls back
    Given a daemon that launches llama-server on model "a"
    When I submit to pool "x" a task with '{"engine": "llamacpp", "model_ref": "tiny", "max_tokens": 4}'
    And I read the task's stream
    Then the stream ends with "end"
    When I reload the pool onto model "b"
    Then the response status is 200
    And the engine runs model "b"
    When I reload the pool onto a broken model file
    Then the response status is 409 with code "CONFLICT"
    And the engine runs model "b"
    When I submit to pool "x" a task with '{"engine": "llamacpp", "model_ref": "tiny", "max_tokens": 4}'
    And I read the task's stream
    Then the stream ends with "end"

  Scenario: Drain, then reload, dropping nothing
    Given a daemon that launches llama-server on model "a"
    When I submit to pool "x" a task with '{"engine": "llamacpp", "model_ref": "tiny", "max_tokens": 30}'
    And I send POST "/v1/pools/tiny/drain" with body '{"deadline_ms": 1500}'
    Then the response status is 202
    When I reload the pool onto model "b"
    Then the response status is 409 with code "CONFLICT"
    When I read the task's stream
    Then the stream ends with "end"
    When I wait 1600 ms
    And I reload the pool onto model "b"
    Then the response status is 200
    And the engine runs model "b"
