// AudioWorklet: the level of two inputs (0: the microphone, 1: the agent) per 128-sample render
// quantum, on the audio clock both share. The page keeps the two envelopes; the latency benchmark
// cross-correlates them (echo mode) to measure mouth-to-ear delay.
class MaataEnvelope extends AudioWorkletProcessor {
  constructor() { super(); this.you = []; this.agent = []; }
  static rms(input) {
    if (!input || !input.length || !input[0]) return 0;
    const x = input[0]; let s = 0;
    for (let i = 0; i < x.length; i++) s += x[i] * x[i];
    return Math.sqrt(s / x.length);
  }
  process(inputs) {
    this.you.push(MaataEnvelope.rms(inputs[0]));
    this.agent.push(MaataEnvelope.rms(inputs[1]));
    if (this.you.length >= 64) {
      this.port.postMessage({ you: this.you, agent: this.agent });
      this.you = []; this.agent = [];
    }
    return true;
  }
}
registerProcessor("maata-envelope", MaataEnvelope);
