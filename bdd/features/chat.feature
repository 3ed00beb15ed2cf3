Feature: Chat as data: conversations, tools and the engine's own answer
  A chat task carries the conversation as data to the engine's own chat endpoint: tool
  calls come back as `tool_call` frames and the engine's finish reason rides on `end`.
  Chat fields on other workloads are refused by name, and the OpenAI door answers an
  unknown model the way OpenAI does.

  Background:
    Given a mock pool "p" with "slots = 2"
    And the daemon is running

  Scenario: A required tool is called, in fragments, and the engine says why it stopped
    When I submit to pool "p" a task with '{"workload": "chat", "prompt": null, "messages": [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Oslo?"}], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}], "tool_choice": "required"}'
    Then the response status is 202
    When I read the task's stream
    Then the stream begins with "started" and ends with "end"
    And the stream carries one tool call "get_weather" with arguments "{}"
    And the end frame's "finish_reason" is "tool_calls"
    And the end frame's "tokens_out" is "2"

  Scenario: A conversation without tools streams text
    When I submit to pool "p" a task with '{"workload": "chat", "prompt": null, "max_tokens": 3, "messages": [{"role": "user", "content": "Hello"}]}'
    Then the response status is 202
    When I read the task's stream
    Then the stream carries 3 tokens with indices 0 to 2
    And the end frame's "finish_reason" is "length"

  Scenario: Chat fields belong to chat tasks
    When I submit to pool "p" a task with '{"tools": [{"type": "function", "function": {"name": "f"}}]}'
    Then the response status is 400 with code "INVALID_PARAMS"
    And the response field "/message" is "tools: only for workload chat"

  Scenario: An unknown model through the OpenAI door is OpenAI's 404
    When I send POST "/v1/chat/completions" with body '{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}'
    Then the response status is 404
    And the response field "/error/code" is "model_not_found"
