import{a,b,c}from"./chunk-2BFT3EGW.js";import"./chunk-TL2BBHSL.js";import"./chunk-SFORIZQJ.js";import"./chunk-VC46IEJQ.js";export{c as init,b as poolText,a as workerUrl};
