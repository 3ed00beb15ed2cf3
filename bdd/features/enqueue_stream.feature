Feature: Enqueue a task and stream its tokens
  A client submits a completion, gets 202 with a stream URL, and reads SSE frames:
  started, tokens in order, metrics, then exactly one terminal frame.

  Background:
    Given a running daemon with a mock pool "p"

  Scenario: A completion streams started, ordered tokens, metrics and end
    When I submit a completion of 6 tokens to pool "p"
    Then the response status is 202
    And the stream begins with "started" and ends with "end"
    And the stream carries 6 tokens with indices 0 to 5
    And a "metrics" frame comes right before "end"
    And the task state is "succeeded"

  Scenario: The same seed gives the same text
    When I submit a completion of 5 tokens to pool "p" with seed 99
    And I remember the streamed text
    And I submit a completion of 5 tokens to pool "p" with seed 99
    Then the streamed text is the same as remembered

  Scenario: Unknown tasks are not found
    When I ask for the stream of task "no-such-task"
    Then the response status is 404 with code "NOT_FOUND"
