// POST /tasks at a constant arrival rate, for the benchmark's latency figure.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e RATE=500 -e SECONDS=10 bench/k6/submit_rate.js
import http from "k6/http";

const BASE_URL = __ENV.BASE_URL || "http://127.0.0.1:8080";
const BODY = JSON.stringify({ action: "uppercase", data: { text: "hello world" } });

export const options = {
  scenarios: {
    submit: {
      executor: "constant-arrival-rate",
      rate: parseInt(__ENV.RATE || "500"),
      timeUnit: "1s",
      duration: `${__ENV.SECONDS || "10"}s`,
      preAllocatedVUs: 50,
      maxVUs: 400,
    },
  },
  summaryTrendStats: ["med", "p(95)", "max"],
};

export default function () {
  http.post(`${BASE_URL}/tasks`, BODY, { headers: { "Content-Type": "application/json" } });
}
