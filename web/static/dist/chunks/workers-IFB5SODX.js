import{a,b,c}from"./chunk-7FLKY4ZW.js";import"./chunk-MNGY4EYH.js";import"./chunk-S6IJTZB3.js";export{c as init,b as poolText,a as workerUrl};
