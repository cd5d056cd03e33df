// The official `openai` npm client, unchanged, against a running `duet serve`.
// DUET_BASE_URL (e.g. http://127.0.0.1:8000/v1) and DUET_API_KEY are set by
// scripts/test-clients.sh, which starts the server and runs `node --test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.DUET_BASE_URL ?? "http://127.0.0.1:8000/v1",
  apiKey: process.env.DUET_API_KEY ?? "none",
});

test("models.list shows the served model", async () => {
  const models = await client.models.list();
  const ids = models.data.map((m) => m.id);
  assert.deepEqual(ids, ["stories260K"]);
});

test("completions.create answers with text, finish_reason and usage", async () => {
  const c = await client.completions.create({
    model: "stories260K",
    prompt: "Once upon a time",
    max_tokens: 20,
    temperature: 0,
  });
  assert.equal(c.object, "text_completion");
  assert.equal(c.choices.length, 1);
  assert.ok(c.choices[0].text.startsWith(", there was a little girl"), c.choices[0].text);
  assert.equal(c.choices[0].finish_reason, "length");
  assert.equal(c.usage.completion_tokens, 20);
});

test("a streamed completion yields the same text as the non-streamed one", async () => {
  const params = { model: "stories260K", prompt: "Once upon a time", max_tokens: 30, temperature: 0 };
  const whole = await client.completions.create(params);
  const stream = await client.completions.create({ ...params, stream: true });
  let text = "";
  let finish = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    text += chunk.choices[0]?.text ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.ok(chunks > 1, "streamed in several chunks");
  assert.equal(text, whole.choices[0].text);
  assert.equal(finish, "length");
});

test("chat.completions streams deltas with the assistant role", async () => {
  const stream = await client.chat.completions.create({
    model: "stories260K",
    messages: [{ role: "user", content: "Tell me a story." }],
    max_tokens: 16,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  });
  let role = null;
  let text = "";
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const delta = chunk.choices[0]?.delta;
    if (delta?.role) role = delta.role;
    text += delta?.content ?? "";
  }
  assert.equal(role, "assistant");
  assert.ok(text.length > 0);
  assert.equal(usage.completion_tokens, 16);
});

test("errors surface as the client's typed errors", async () => {
  await assert.rejects(
    client.completions.create({ model: "no-such-model", prompt: "x" }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404,
  );
  await assert.rejects(
    client.completions.create({ model: "stories260K", prompt: "x", n: 2 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "n",
  );
  const wrongKey = new OpenAI({ baseURL: client.baseURL, apiKey: "wrong-key" });
  await assert.rejects(
    wrongKey.completions.create({ model: "stories260K", prompt: "x" }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
  );
});
