Feature: Transcripts and artifacts
  Every task leaves a transcript artifact named on its terminal frame. Clients store their
  own artifacts, content-addressed, and fetch them with ETag caching.

  Background:
    Given a mock pool "p" with "slots = 2"
    And the daemon is running

  Scenario: A finished task's transcript
    When I submit to pool "p" a task with '{"max_tokens": 4, "seed": 7}'
    And I read the task's stream
    Then the terminal frame names the task's transcript
    When I send GET "/v1/artifacts/{artifact}"
    Then the response status is 200
    And the response field "/kind" is "transcript"
    And the response field "/content/seed" is "7"
    And the response field "/content/prompt" is "<redacted>"
    When I send GET "/v1/tasks/{task}"
    Then the response field "/artifact_id" is the remembered artifact

  Scenario: Store and fetch an artifact
    When I send POST "/v1/artifacts" with body '{"kind": "plan", "content": {"steps": [1, 2]}}'
    Then the response status is 201
    And I remember the artifact id from the response
    When I send GET "/v1/artifacts/{artifact}"
    Then the response status is 200
    And the response field "/content/steps/1" is "2"
    When I fetch the artifact again with its ETag
    Then the response status is 304
