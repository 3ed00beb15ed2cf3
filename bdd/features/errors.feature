Feature: Error taxonomy
  Every failure has one code, an HTTP status, an envelope with the correlation id, and the
  daemon keeps serving.

  Background:
    Given a mock pool "p" with "slots = 2"
    And a mock pool "dying" with 'failure = "panic_mid_stream", fail_after_tokens = 2'
    And the daemon is running

  Scenario Outline: Refusals before admission
    When I submit to pool "p" a task with '<fields>'
    Then the response status is <status> with code "<code>"

    Examples:
      | fields                                        | status | code             |
      | {"priority": "urgent"}                        | 400    | INVALID_PARAMS   |
      | {"ctx": 100000}                               | 400    | INVALID_PARAMS   |
      | {"model_ref": "nobody-serves-this"}           | 404    | NOT_FOUND        |
      | {"max_tokens": 5000, "deadline_ms": 5}        | 400    | DEADLINE_UNMET   |
      | {"placement": {"require_device_mask": "g9"}}  | 503    | REPLICA_EXHAUSTED |

  Scenario: Unknown ids and duplicate ids
    When I send GET "/v1/tasks/nobody"
    Then the response status is 404 with code "NOT_FOUND"
    When I submit to pool "p" a task with '{"task_id": "same"}'
    And I submit to pool "p" a task with '{"task_id": "same"}'
    Then the response status is 409 with code "CONFLICT"

  Scenario: An engine that dies mid-stream
    When I submit to pool "dying" a task with '{"max_tokens": 10}'
    And I read the task's stream
    Then the stream ends with an "error" frame with code "WORKER_RESET"
    When I submit to pool "p" a task with '{"max_tokens": 2}'
    And I read the task's stream
    Then the stream ends with "end"
