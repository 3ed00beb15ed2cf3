Feature: Security: API keys, roles and ownership
  Requests carry a key (X-API-Key or Bearer). Missing keys are 401, unknown keys 403, a data
  key cannot use the control plane, and a key never sees another key's tasks. Keys are never
  logged.

  Background:
    Given the daemon config:
      """
      [[auth.keys]]
      name = "alice"
      role = "data"
      key = "alice-bdd-canary-5b1f"

      [[auth.keys]]
      name = "bob"
      role = "data"
      key = "bob-bdd-canary-9c2e"

      [[auth.keys]]
      name = "root"
      role = "admin"
      key = "root-bdd-canary-0d7a"
      """
    And a mock pool "p" with "slots = 2"
    And the daemon is running

  Scenario: No key, an unknown key, and a role too low
    When I send GET "/v1/tasks/anything"
    Then the response status is 401 with code "UNAUTHENTICATED"
    When I use the key "not-a-key"
    And I send GET "/v1/tasks/anything"
    Then the response status is 403 with code "FORBIDDEN"
    When I use the key "alice-bdd-canary-5b1f"
    And I send GET "/v1/policies"
    Then the response status is 403 with code "FORBIDDEN"
    When I use the key "root-bdd-canary-0d7a"
    And I send GET "/v1/policies"
    Then the response status is 200

  Scenario: A key never sees another key's task
    When I use the key "alice-bdd-canary-5b1f"
    And I submit to pool "p" a task with '{"max_tokens": 3}'
    Then the response status is 202
    When I use the key "bob-bdd-canary-9c2e"
    And I send GET "/v1/tasks/{task}"
    Then the response status is 404 with code "NOT_FOUND"
    When I send POST "/v1/tasks/{task}/cancel"
    Then the response status is 404 with code "NOT_FOUND"
    When I use the key "alice-bdd-canary-5b1f"
    And I send GET "/v1/tasks/{task}"
    Then the response status is 200
    When I use the key "root-bdd-canary-0d7a"
    And I send GET "/v1/tasks/{task}"
    Then the response status is 200

  Scenario: Keys never reach the log
    When I use the key "alice-bdd-canary-5b1f"
    And I submit to pool "p" a task with '{"max_tokens": 2}'
    And I read the task's stream
    And I use the key "wrong-bdd-canary-77"
    And I send GET "/v1/tasks/{task}"
    Then no log line contains "alice-bdd-canary-5b1f"
    And no log line contains "wrong-bdd-canary-77"
