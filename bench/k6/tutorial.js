// The tutorial's load test: a ramping blast of POST /tasks (uppercase, sum and other actions)
// while readers list tasks at 100 requests/s.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e PEAK=400 bench/k6/tutorial.js
//
// PEAK: submits per second at the top of the ramp; HOLD: seconds held there (default 20).
import http from "k6/http";
import { check } from "k6";

const BASE_URL = __ENV.BASE_URL || "http://127.0.0.1:8080";
const PEAK = parseInt(__ENV.PEAK || "400");
const HOLD = parseInt(__ENV.HOLD || "20");
const JSON_HEADERS = { headers: { "Content-Type": "application/json" } };

export const options = {
  scenarios: {
    blast: {
      executor: "ramping-arrival-rate",
      exec: "submit",
      startRate: Math.ceil(PEAK / 10),
      timeUnit: "1s",
      preAllocatedVUs: 50,
      maxVUs: 400,
      stages: [
        { target: PEAK, duration: `${Math.ceil(HOLD / 2)}s` },
        { target: PEAK, duration: `${HOLD}s` },
      ],
    },
    readers: {
      executor: "constant-arrival-rate",
      exec: "read",
      rate: 100,
      timeUnit: "1s",
      duration: `${Math.ceil(HOLD / 2) + HOLD}s`,
      preAllocatedVUs: 20,
      maxVUs: 100,
    },
  },
  thresholds: {
    "http_req_duration{scenario:blast}": ["p(95)<300"],
    "http_req_duration{scenario:readers}": ["p(95)<500"],
    http_req_failed: ["rate<0.01"],
  },
  summaryTrendStats: ["avg", "med", "p(95)", "p(99)", "max"],
};

const ACTIONS = [
  () => ({ action: "uppercase", data: { text: "hello world" } }),
  () => ({ action: "sum", data: { numbers: [1, 2, 3, Math.floor(Math.random() * 100)] } }),
  () => ({ action: "send_email", data: { to: "a@example.com" } }),
];

export function submit() {
  const body = ACTIONS[Math.floor(Math.random() * ACTIONS.length)]();
  const res = http.post(`${BASE_URL}/tasks`, JSON.stringify(body), JSON_HEADERS);
  check(res, { "202 queued": (r) => r.status === 202 });
}

export function read() {
  const path = Math.random() < 0.5 ? "/tasks" : "/tasks?status=completed";
  const res = http.get(`${BASE_URL}${path}`);
  check(res, { "200": (r) => r.status === 200 });
}
