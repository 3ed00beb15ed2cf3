Feature: Deadlines
  A deadline that cannot be met is refused before admission; one that passes while the
  task runs ends it with an error frame and frees the engine.

  Background:
    Given the daemon config:
      """
      [[pools]]
      id = "optimistic"
      engine = "mock"
      adapter = "mock"
      model_ref = "optimistic-model"
      ctx_max = 4096
      nominal_tokens_per_s = 200.0
      nominal_first_token_ms = 20

      [[pools.replicas]]
      id = "optimistic-0"
      config = { slots = 1, first_token_delay_ms = 5, tokens_per_s = 5.0 }
      """
    And the daemon is running

  Scenario: An infeasible deadline
    When I submit to pool "optimistic" a task with '{"max_tokens": 4000, "deadline_ms": 1000}'
    Then the response status is 400 with code "DEADLINE_UNMET"

  Scenario: A deadline that passes mid-stream
    When I submit to pool "optimistic" a task with '{"max_tokens": 40, "deadline_ms": 1200}'
    And I read the task's stream
    Then the stream ends with an "error" frame with code "DEADLINE_UNMET"
    When I send GET "/v1/tasks/{task}"
    Then the response field "/state" is "failed"
