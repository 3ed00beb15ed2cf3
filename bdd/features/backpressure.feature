Feature: Backpressure
  A full queue answers 429 with honest retry hints; under drop-lru the oldest batch task is
  evicted and its stream says so.

  Scenario: A full queue under reject
    Given the daemon config:
      """
      [queue]
      capacity = 1
      """
    And a mock pool "p" with "slots = 1, tokens_per_s = 20.0"
    And the daemon is running
    When I submit to pool "p" a task with '{"max_tokens": 2000, "expected_tokens": 5}'
    And I wait until the task is running
    And I submit to pool "p" a task with '{"max_tokens": 5}'
    Then the response status is 202
    When I submit to pool "p" a task with '{"max_tokens": 5}'
    Then the response status is 429 with code "ADMISSION_REJECT"
    And the response has the header "retry-after"
    And the response has the header "x-backoff-ms"
    And the response field "/retriable" is "true"

  Scenario: drop-lru evicts the oldest batch task
    Given the daemon config:
      """
      [queue]
      capacity = 1

      [policies.admission]
      component = "admission-default.wasm"
      config = { mode = "drop-lru" }
      """
    And a mock pool "p" with "slots = 1, tokens_per_s = 20.0"
    And the daemon is running
    When I submit to pool "p" a task with '{"max_tokens": 2000, "expected_tokens": 5}'
    And I wait until the task is running
    And I submit to pool "p" a task with '{"max_tokens": 5, "priority": "batch"}'
    And I submit to pool "p" a task with '{"max_tokens": 5, "priority": "interactive"}'
    Then the response status is 202
    When I read the previous task's stream
    Then the stream ends with an "error" frame with code "QUEUE_FULL_DROP_LRU"
