Feature: SSE details and resume
  Every frame has an id (its position in the stream). A client that reconnects with
  Last-Event-ID gets exactly the events after that id, once. Finished tasks replay.

  Background:
    Given the daemon config:
      """
      [stream]
      cancel_on_disconnect = false
      """
    And a mock pool "p" with "slots = 2, first_token_delay_ms = 5, tokens_per_s = 400.0"
    And the daemon is running

  Scenario: Ids count up from 0
    When I submit to pool "p" a task with '{"max_tokens": 8}'
    And I read the task's stream
    Then every frame has an id, counting up from 0 without a gap
    And the stream ends with "end"

  Scenario: Resume after an id
    When I submit to pool "p" a task with '{"max_tokens": 12}'
    And I read the task's stream
    And I resume the task's stream after event 4
    Then the resumed stream holds exactly the events after 4

  Scenario: Unknown tasks have no stream
    When I send GET "/v1/tasks/none/stream"
    Then the response status is 404 with code "NOT_FOUND"
