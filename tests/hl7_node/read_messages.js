// Reads HL7 v2 messages (a JSON array of ER7 strings on stdin) with Medplum's parser, and
// writes what it read: for each message, its segments with every field as repetitions of
// components of subcomponents.
"use strict";
const { Hl7Message } = require("@medplum/core");

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const read = JSON.parse(input).map((text) => {
    const message = Hl7Message.parse(text);
    return message.segments.map((segment) => ({
      name: segment.name,
      fields: segment.fields.map((field) =>
        field.components.map((components) => components.map((c) => c.split("&"))),
      ),
    }));
  });
  process.stdout.write(JSON.stringify(read));
});
