Feature: Budgets
  Each key (and session) may have a budget. Admission reserves against it, the stream
  settles it, and the headers say what is left. A request the budget cannot cover is 429.

  Background:
    Given the daemon config:
      """
      [budgets]
      per_key = { tokens = 40 }
      """
    And a mock pool "p" with "slots = 2"
    And the daemon is running

  Scenario: The budget is reported and enforced
    When I submit to pool "p" a task with '{"max_tokens": 10, "prompt": "hi"}'
    Then the response status is 202
    And the response has the header "x-budget-tokens-remaining"
    When I submit to pool "p" a task with '{"max_tokens": 500}'
    Then the response status is 429 with code "BUDGET_EXCEEDED"
