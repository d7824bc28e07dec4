// One chat, end to end, driven by the official JavaScript client (socket.io-client from npm),
// the one web front ends use. Run by tests/api/js_client.rs against a freshly spawned server:
//
//   node tests/js/chat-flow.mjs '{"url": "http://127.0.0.1:PORT", "agentId": 2,
//     "agentToken": "<JWT>", "sessionToken": "<widget session>", "conversationId": 1}'
//
// The Rust side opens the visitor's session while the agent is offline, so the conversation
// waits; only when both sockets are connected does the agent go online, and the assignment is
// heard on both sides (no race with an assignment that happened before anyone listened).
//
// Sockets use the client's default transports: the handshakes run over HTTP long-polling, then
// the client upgrades to WebSocket, which the script waits for before chatting, so both
// transports of the server are exercised.
//
// Success: one line of JSON on stdout, exit code 0. Failure: the step and the reason on stderr,
// exit code 1. Every wait is bounded by WAIT_MS.

import { io } from "socket.io-client";

/** How long any one wait (a handshake, an acknowledgement, a pushed event) may take. */
const WAIT_MS = 10_000;

/** A failed expectation: its message is the whole story, no stack trace needed. */
class Failure extends Error {}

/** The step under way, named in the failure message. */
let step = "reading the configuration";

function fail(message) {
  throw new Failure(message);
}

function expectEqual(actual, expected, what) {
  if (actual !== expected) {
    fail(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}

/** `promise`, or a Failure naming `what` after `ms`; `onTimeout` cleans up what it left. */
function within(ms, what, promise, onTimeout = () => {}) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new Failure(`no ${what} within ${ms} ms`));
    }, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * One socket, with every pushed event kept until a test step takes it, so an event that
 * arrives before the step waiting for it is not lost.
 */
class Peer {
  constructor(name, namespace, auth) {
    this.name = name;
    this.namespace = namespace;
    /** Transports in the order used: ["polling", "websocket"] once upgraded. */
    this.transports = [];
    this.inbox = [];
    this.waiters = [];
    // A Manager (one Engine.IO connection) per socket, as an agent's browser and a visitor's
    // are separate; no reconnection, so a refusal or a drop fails the run instead of looping.
    this.socket = io(`${config.url}${namespace}`, {
      auth,
      forceNew: true,
      reconnection: false,
    });
    this.upgraded = new Promise((resolve) => {
      // The Manager's "open" comes before the Engine starts probing for an upgrade.
      this.socket.io.on("open", () => {
        const engine = this.socket.io.engine;
        this.transports.push(engine.transport.name);
        engine.once("upgrade", (transport) => {
          this.transports.push(transport.name);
          resolve(transport.name);
        });
      });
    });
    this.socket.onAny((event, payload) => this.receive(event, payload));
  }

  receive(event, payload) {
    const index = this.waiters.findIndex((w) => w.event === event && w.matches(payload));
    if (index >= 0) {
      const [waiter] = this.waiters.splice(index, 1);
      waiter.resolve(payload);
    } else {
      this.inbox.push({ event, payload });
    }
  }

  /** Resolves once the namespace accepted the handshake; a connect_error fails. */
  connected() {
    const socket = this.socket;
    return within(
      WAIT_MS,
      `connection of the ${this.name} to ${this.namespace}`,
      new Promise((resolve, reject) => {
        if (socket.connected) return resolve();
        socket.once("connect", resolve);
        socket.once("connect_error", (err) =>
          reject(new Failure(`${this.name}: handshake refused: ${err.message}`)),
        );
      }),
    );
  }

  /** Resolves with the connect_error a refused handshake gives; a connection fails. */
  refused() {
    const socket = this.socket;
    return within(
      WAIT_MS,
      `connect_error for the ${this.name}`,
      new Promise((resolve, reject) => {
        socket.once("connect_error", resolve);
        socket.once("connect", () =>
          reject(new Failure(`${this.name}: ${this.namespace} accepted the handshake`)),
        );
      }),
    );
  }

  /** The next pushed `event` whose payload satisfies `matches` (others are kept). */
  next(event, matches = () => true) {
    const index = this.inbox.findIndex((e) => e.event === event && matches(e.payload));
    if (index >= 0) {
      return Promise.resolve(this.inbox.splice(index, 1)[0].payload);
    }
    const waiter = { event, matches };
    const arrived = new Promise((resolve) => {
      waiter.resolve = resolve;
      this.waiters.push(waiter);
    });
    const got = () => JSON.stringify(this.inbox.map((e) => [e.event, e.payload]));
    return within(WAIT_MS, `${event} for the ${this.name}`, arrived, () => {
      this.waiters = this.waiters.filter((w) => w !== waiter);
    }).catch((err) => {
      throw err instanceof Failure ? new Failure(`${err.message}; it got ${got()}`) : err;
    });
  }

  /** Sends request `event` and returns its acknowledgement, `{ok, data | error}`. */
  async request(event, payload) {
    try {
      return await this.socket.timeout(WAIT_MS).emitWithAck(event, payload);
    } catch {
      fail(`${this.name}: no acknowledgement of ${event} within ${WAIT_MS} ms`);
    }
  }

  /** A request that must succeed; returns its `data`. */
  async ok(event, payload) {
    const ack = await this.request(event, payload);
    if (ack?.ok !== true) {
      fail(`${this.name}: ${event} ${JSON.stringify(payload)} was refused: ${JSON.stringify(ack)}`);
    }
    return ack.data;
  }

  /** A request that must fail; returns its `error.code`. */
  async refusedRequest(event, payload) {
    const ack = await this.request(event, payload);
    if (ack?.ok !== false || typeof ack.error?.code !== "string") {
      fail(`${this.name}: ${event} ${JSON.stringify(payload)} was not refused: ${JSON.stringify(ack)}`);
    }
    return ack.error.code;
  }

  close() {
    this.socket.close();
  }
}

/** Opens a socket whose handshake must be refused; returns the refusal's message. */
async function refusal(namespace, auth, expected) {
  const peer = new Peer(`client with auth ${JSON.stringify(auth)}`, namespace, auth);
  try {
    const err = await peer.refused();
    if (err.type === "TransportError") {
      // Not the server's answer: the connection itself failed.
      fail(`${config.url}${namespace} is unreachable: ${err.message}`);
    }
    if (!err.message.includes(expected)) {
      fail(`${namespace} refused ${JSON.stringify(auth)} with "${err.message}", expected it to mention "${expected}"`);
    }
    return err.message;
  } finally {
    peer.close();
  }
}

/** The agent's own token with its subject changed: well-formed, but the signature no longer fits. */
function forged(token) {
  const [header, payload, signature] = token.split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
  claims.sub = String(Number(claims.sub) + 1000);
  return [header, Buffer.from(JSON.stringify(claims)).toString("base64url"), signature].join(".");
}

/** The run's configuration (argv[2]). */
let config;
/** Every socket opened for the chat, closed at the end whatever happens. */
const peers = [];

async function main() {
  config = JSON.parse(process.argv[2] ?? "null") ?? fail("usage: chat-flow.mjs '<json config>'");
  for (const key of ["url", "agentId", "agentToken", "sessionToken", "conversationId"]) {
    if (config[key] === undefined) fail(`the configuration has no ${key}`);
  }
  const conversationId = config.conversationId;
  const ofConversation = (body) => body?.conversationId === conversationId;

  step = "refused handshakes";
  const refusals = [
    await refusal("/agents", {}, "missing auth.token"),
    await refusal("/agents", { token: forged(config.agentToken) }, "invalid"),
    await refusal("/visitors", { sessionToken: "not-a-session" }, "unknown session token"),
  ];

  step = "connecting the agent and the visitor";
  const agent = new Peer("agent", "/agents", { token: config.agentToken });
  const visitor = new Peer("visitor", "/visitors", { sessionToken: config.sessionToken });
  peers.push(agent, visitor);
  await Promise.all([agent.connected(), visitor.connected()]);

  step = "upgrading from long-polling to WebSocket";
  for (const peer of [agent, visitor]) {
    await within(WAIT_MS, `WebSocket upgrade of the ${peer.name}`, peer.upgraded);
    expectEqual(peer.transports.join(" -> "), "polling -> websocket", `${peer.name}'s transports`);
  }

  step = "the agent goes online and is assigned the conversation";
  const me = await agent.ok("status:set", { status: "online" });
  expectEqual(me.status, "online", "status:set answer's status");
  const assigned = await agent.next("conversation:assigned", ofConversation);
  expectEqual(assigned.agentId, config.agentId, "conversation:assigned agentId");
  const card = await visitor.next("conversation:assigned", ofConversation);
  if (typeof card.agent?.name !== "string" || card.agent.name === "") {
    fail(`the visitor's conversation:assigned has no agent name: ${JSON.stringify(card)}`);
  }

  step = "a bad request is answered with an error acknowledgement";
  const badRequest = await visitor.refusedRequest("message:send", { clientMessageId: "js-bad" });
  expectEqual(badRequest, "validation_failed", "error code of a message without content");

  step = "visitor -> agent message";
  const question = "is my order on its way?";
  const sent = await visitor.ok("message:send", { content: question, clientMessageId: "js-v-1" });
  expectEqual(sent.clientMessageId, "js-v-1", "the visitor's ack echoes clientMessageId");
  expectEqual(sent.conversationId, conversationId, "the visitor's message conversationId");
  const heard = await agent.next("message:new", (e) => e?.id === sent.id);
  expectEqual(heard.content, question, "the agent's message:new content");
  expectEqual(heard.authorType, "visitor", "the agent's message:new authorType");
  expectEqual(heard.clientMessageId, "js-v-1", "the agent's message:new clientMessageId");

  step = "typing, both ways";
  await agent.ok("typing:set", { conversationId, typing: true });
  const agentTyping = await visitor.next("typing", (t) => t?.from === "agent");
  expectEqual(agentTyping.typing, true, "the visitor's typing.typing");
  await visitor.ok("typing:set", { typing: true });
  const visitorTyping = await agent.next("typing", (t) => t?.from === "visitor");
  expectEqual(visitorTyping.conversationId, conversationId, "the agent's typing.conversationId");

  step = "the agent has seen the visitor's message";
  await agent.ok("message:seen", { conversationId, eventId: sent.id });
  const seenByAgent = await visitor.next("message:seen", (s) => s?.eventId === sent.id);
  expectEqual(seenByAgent.by, "agent", "the visitor's message:seen.by");

  step = "agent -> visitor reply";
  const answer = "yes, it ships today";
  const reply = await agent.ok("message:send", { conversationId, content: answer, clientMessageId: "js-a-1" });
  expectEqual(reply.clientMessageId, "js-a-1", "the agent's ack echoes clientMessageId");
  const delivered = await visitor.next("message:new", (e) => e?.id === reply.id);
  expectEqual(delivered.content, answer, "the visitor's message:new content");
  expectEqual(delivered.authorType, "agent", "the visitor's message:new authorType");
  expectEqual(delivered.agentId, config.agentId, "the visitor's message:new agentId");

  step = "the visitor has seen the reply";
  await visitor.ok("message:seen", { eventId: reply.id });
  const seenByVisitor = await agent.next("message:seen", (s) => s?.eventId === reply.id);
  expectEqual(seenByVisitor.by, "visitor", "the agent's message:seen.by");

  step = "the agent closes the conversation";
  const closing = await agent.ok("conversation:close", { conversationId, reason: "answered" });
  expectEqual(closing.accepted, true, "conversation:close accepted");
  const closedForAgent = await agent.next("conversation:closed", ofConversation);
  expectEqual(closedForAgent.closedBy, "agent", "the agent's conversation:closed.closedBy");
  const closedForVisitor = await visitor.next("conversation:closed", ofConversation);
  expectEqual(closedForVisitor.closedBy, "agent", "the visitor's conversation:closed.closedBy");
  expectEqual(closedForVisitor.reason, undefined, "the visitor's conversation:closed.reason (agents' notes stay with agents)");

  step = "closing the sockets";
  return {
    ok: true,
    conversationId,
    threadId: sent.threadId,
    agentName: card.agent.name,
    visitorMessageId: sent.id,
    agentMessageId: reply.id,
    transports: { agent: agent.transports, visitor: visitor.transports },
    refusals,
  };
}

try {
  const summary = await main();
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  process.exitCode = 0;
} catch (err) {
  const reason = err instanceof Failure ? err.message : (err?.stack ?? String(err));
  process.stderr.write(`chat-flow: failed at step "${step}": ${reason}\n`);
  process.exitCode = 1;
} finally {
  // Closing sends each namespace's disconnect packet; node exits once they are flushed. The
  // unref'd timer only fires if something still held the event loop after that.
  for (const peer of peers) peer.close();
  setTimeout(() => process.exit(), 2_000).unref();
}
