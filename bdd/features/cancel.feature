Feature: Cancel a task
  Cancel is race-free: once the 204 is sent no token follows, the engine work stops and
  the stream ends with an end frame marked canceled.

  Background:
    Given a running daemon with a slow one-slot mock pool "slow"

  Scenario: Cancel mid-stream
    When I submit a completion of 10000 tokens to pool "slow"
    And I read 3 tokens from its stream
    And I cancel the task
    Then the response status is 204
    And the stream ends with "end" marked canceled
    And no token follows the cancel
    And the task state is "canceled"

  Scenario: Cancel a queued task before it runs
    When I submit a completion of 10000 tokens to pool "slow"
    And I submit another completion of 5 tokens to pool "slow"
    And I cancel the other task
    Then the response status is 204
    And the other task's stream holds only an "end" frame marked canceled
    And the other task state is "canceled"

  Scenario: Cancel is idempotent and unknown ids are not found
    When I submit a completion of 10000 tokens to pool "slow"
    And I cancel the task
    And I cancel the task
    Then the response status is 204
    When I cancel task "never-was"
    Then the response status is 404 with code "NOT_FOUND"
