// Run the Vercel AI SDK (`ai` with `@ai-sdk/openai-compatible`) against a gateway; print the result as JSON.
//
//   node run_vercel_ai.mjs BASE_URL OPERATION QUESTION MAX_TOKENS
//
// OPERATION is `generateText` or `streamText`. The test copies this file into the client's node
// folder first, because Node resolves an ES module's imports from the file's own folder.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, streamText } from "ai";

const [baseURL, operation, question, maxTokens] = process.argv.slice(2);
const gateway = createOpenAICompatible({ name: "gateway", baseURL, apiKey: "unused" });
const options = {
  model: gateway("smollm2"),
  system: "Answer in one sentence.",
  prompt: question,
  maxOutputTokens: Number(maxTokens),
  maxRetries: 0,
};
if (operation === "generateText") {
  const result = await generateText(options);
  console.log(JSON.stringify({ text: result.text }));
} else {
  const result = streamText(options);
  let deltas = "";
  for await (const delta of result.textStream) deltas += delta;
  console.log(JSON.stringify({ text: await result.text, deltas }));
}
