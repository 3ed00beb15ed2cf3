Feature: Budgets that reset and rate limits
  Budget spend and rate-limit counters live in the state store (SQLite by default). A
  budget with a period resets at its window's end and says when; a rate limit refuses
  past its count in the window and says how much is left.

  Scenario: A budget with a period says when it resets
    Given the daemon config:
      """
      [budgets]
      per_key = { tokens = 40, period = "1h" }
      """
    And a mock pool "p" with "slots = 2"
    And the daemon is running
    When I submit to pool "p" a task with '{"max_tokens": 30, "prompt": "hi"}'
    Then the response status is 202
    When I submit to pool "p" a task with '{"max_tokens": 30, "prompt": "hi"}'
    Then the response status is 429 with code "BUDGET_EXCEEDED"
    And the response has the header "retry-after"
    And the response field "/retriable" is "true"

  Scenario: A budget without a period never resets
    Given the daemon config:
      """
      [budgets]
      per_key = { tokens = 40 }
      """
    And a mock pool "p" with "slots = 2"
    And the daemon is running
    When I submit to pool "p" a task with '{"max_tokens": 30, "prompt": "hi"}'
    Then the response status is 202
    When I submit to pool "p" a task with '{"max_tokens": 30, "prompt": "hi"}'
    Then the response status is 429 with code "BUDGET_EXCEEDED"
    And the response field "/retriable" is "false"

  Scenario: A rate limit refuses past its requests per window
    Given the daemon config:
      """
      [rate_limits]
      per_key = { requests = 2, window_ms = 3600000 }
      """
    And a mock pool "p" with "slots = 4"
    And the daemon is running
    When I submit to pool "p" a task with '{"max_tokens": 1}'
    Then the response status is 202
    And the response has the header "x-ratelimit-remaining-requests"
    When I submit to pool "p" a task with '{"max_tokens": 1}'
    Then the response status is 202
    When I submit to pool "p" a task with '{"max_tokens": 1}'
    Then the response status is 429 with code "ADMISSION_REJECT"
    And the response has the header "retry-after"
    And the response field "/policy_label" is "rate_limit"
