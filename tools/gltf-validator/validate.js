#!/usr/bin/env node
// Validate one .glb/.gltf with the Khronos glTF validator and print its report as JSON on stdout.
// Exit status: 0 = no errors, 1 = the file has validation errors, 2 = usage or I/O problem.
'use strict';

const fs = require('fs');
const path = require('path');
const validator = require('gltf-validator');

async function main(argv) {
  if (argv.length !== 1) {
    process.stderr.write('usage: node validate.js FILE.glb|FILE.gltf\n');
    return 2;
  }
  const file = path.resolve(argv[0]);
  let bytes;
  try {
    bytes = new Uint8Array(fs.readFileSync(file));
  } catch (err) {
    process.stderr.write(`error: cannot read ${file}: ${err.message}\n`);
    return 2;
  }
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 100,
    // .gltf files may reference .bin/images next to them; a .glb carries everything itself.
    externalResourceFunction: (uri) =>
      new Promise((resolve, reject) => {
        fs.readFile(path.join(path.dirname(file), decodeURIComponent(uri)), (err, data) =>
          err ? reject(err.toString()) : resolve(new Uint8Array(data)));
      }),
  });
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  return report.issues.numErrors > 0 ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`error: ${err && err.message ? err.message : err}\n`);
    process.exit(2);
  });
