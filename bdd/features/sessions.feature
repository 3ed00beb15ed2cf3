Feature: Sessions
  A session is created by its first task, owned by the calling key, counts turns up to a
  cap, and can be deleted (which cancels its tasks).

  Background:
    Given the daemon config:
      """
      [sessions]
      max_turns = 2
      """
    And a mock pool "p" with "slots = 1, tokens_per_s = 100.0"
    And the daemon is running

  Scenario: Turns are counted and capped
    When I submit to pool "p" a task with '{"session_id": "chat-1", "max_tokens": 2}'
    And I send GET "/v1/sessions/chat-1"
    Then the response status is 200
    And the response field "/turns" is "1"
    When I submit to pool "p" a task with '{"session_id": "chat-1", "max_tokens": 2}'
    Then the response status is 202
    When I submit to pool "p" a task with '{"session_id": "chat-1", "max_tokens": 2}'
    Then the response status is 400 with code "INVALID_PARAMS"

  Scenario: Deleting a session cancels its tasks and forgets it
    When I submit to pool "p" a task with '{"session_id": "chat-2", "max_tokens": 5000, "expected_tokens": 5}'
    And I send DELETE "/v1/sessions/chat-2"
    Then the response status is 204
    When I send GET "/v1/sessions/chat-2"
    Then the response status is 404 with code "NOT_FOUND"
    When I send GET "/v1/tasks/{task}"
    Then the response field "/state" is "canceled"

  Scenario: Unknown sessions are not found
    When I send GET "/v1/sessions/never"
    Then the response status is 404 with code "NOT_FOUND"
